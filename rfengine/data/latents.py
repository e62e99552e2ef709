"""Pre-extracted VAE latent shards (ImageNet-256 and the like).

Layout of a shard folder:
  meta.json            {"vae": str, "scale_factor": float, "resolution": int, "flip": "both"|"none",
                        "channels": int, "latent_size": int, "num_classes": int,
                        "shards": [{"latents": "latents_00000.npy", "labels": "labels_00000.npy"}, ...]}
  latents_XXXXX.npy    (n, F, C, h, w) float16/float32, F = 2 (plain and flipped) when flip is "both", else 1;
                       stored unscaled: the reader multiplies by scale_factor
  labels_XXXXX.npy     (n,) int64
The reader checks the metadata against the run's config before training starts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

REQUIRED_META = ("vae", "scale_factor", "resolution", "flip", "channels", "latent_size", "num_classes", "shards")


class LatentShardDataset(torch.utils.data.Dataset):
    """Items: (latent (C, h, w) float32, already scaled, label int64). Index i >= len(self) // 2
    with flips on selects the stored flipped copy (see ShardSampler)."""

    def __init__(self, root: str | Path, *, vae: str = "", scale_factor: float | None = None,
                 resolution: int | None = None, flip: bool = False):
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            what = "does not exist" if not root.exists() else "has no meta.json (not a finished set of latent shards)"
            raise FileNotFoundError(
                f"data.path: the latent shard folder {root} {what}. Make it from an image folder with "
                f"`python -m rfengine.extract_latents --images IMAGES --vae {vae or 'stabilityai/sd-vae-ft-ema'} "
                f"--out {root} --resolution {resolution or 256}` (pip install -e \".[latents]\"), or try the run "
                f"on random latents first with `--set data.name=synthetic --set data.image_size={(resolution or 256) // 8}`")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ValueError(f"{meta_path}: missing metadata keys {missing}")
        problems = []
        if vae and meta["vae"] != vae:
            problems.append(f"data.vae is {vae!r} but the shards were encoded with {meta['vae']!r}")
        if scale_factor is not None and abs(float(meta["scale_factor"]) - scale_factor) > 1e-9:
            problems.append(f"data.scale_factor is {scale_factor} but the shards say {meta['scale_factor']}")
        if resolution is not None and int(meta["resolution"]) != resolution:
            problems.append(f"data.image_size is {resolution} but the shards were made at {meta['resolution']}")
        if flip and meta["flip"] != "both":
            problems.append(f"data.flip is on but the shards store flip={meta['flip']!r} (need 'both')")
        if problems:
            raise ValueError(f"latent shards in {root} disagree with the config: " + "; ".join(problems))
        self.latents, self.labels = [], []
        for entry in meta["shards"]:
            lat = np.load(root / entry["latents"], mmap_mode="r")
            lab = np.load(root / entry["labels"])
            if lat.ndim != 5 or lat.shape[2:] != (meta["channels"], meta["latent_size"], meta["latent_size"]):
                raise ValueError(f"{root / entry['latents']}: shape {lat.shape} disagrees with meta.json "
                                 f"(n, F, {meta['channels']}, {meta['latent_size']}, {meta['latent_size']})")
            if lab.shape != (lat.shape[0],):
                raise ValueError(f"{root / entry['labels']}: {lab.shape[0]} labels for {lat.shape[0]} latents")
            self.latents.append(lat)
            self.labels.append(lab)
        self.offsets = np.cumsum([0] + [x.shape[0] for x in self.latents])
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise ValueError(f"data.path: latent shard folder {root} holds no samples")
        self.scale = float(meta["scale_factor"])
        self.flip = flip
        self.num_classes = int(meta["num_classes"])
        self.shape = (int(meta["channels"]), int(meta["latent_size"]), int(meta["latent_size"]))
        self.meta = meta

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        flipped = i >= self.n
        i = i % self.n
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        j = i - int(self.offsets[s])
        arr = np.asarray(self.latents[s][j, 1 if flipped else 0], dtype=np.float32)
        return torch.from_numpy(arr * self.scale), torch.tensor(int(self.labels[s][j]), dtype=torch.long)
