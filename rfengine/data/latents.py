"""Pre-extracted VAE latent shards (ImageNet-256 and the like).

Layout of a shard folder:
  meta.json            {"vae": str, "scale_factor": float, "resolution": int, "flip": "both"|"none",
                        "channels": int, "latent_size": int, "num_classes": int,
                        "shards": [{"latents": "latents_00000.npy", "labels": "labels_00000.npy"}, ...],
                        "vae_config": dict, "vae_sha256": str}  (the VAE by content: `vae.vae_identity`)
  latents_XXXXX.npy    (n, F, C, h, w) float16/float32, F = 2 (plain and flipped) when flip is "both", else 1;
                       stored unscaled: the reader multiplies by scale_factor
  labels_XXXXX.npy     (n,) int64
The reader checks the metadata against the run's config before training starts. The VAE is checked by
content when the names differ: `data.vae` naming a copy of the VAE the shards were made with (another
folder, the hub name of a local copy) is accepted, a different VAE refused; see `vae_problem`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("rfengine")

REQUIRED_META = ("vae", "scale_factor", "resolution", "flip", "channels", "latent_size", "num_classes", "shards")


def recorded_vae(meta: dict) -> dict | None:
    """The identity (`vae.vae_identity`) of the VAE the shards were encoded with, or None when meta.json
    predates recording it."""
    if "vae_sha256" not in meta:
        return None
    return {"config": meta.get("vae_config") or {}, "sha256": meta["vae_sha256"]}


def vae_problem(meta: dict, vae: str) -> str | None:
    """Why `vae` (data.vae) is not the VAE the shards were encoded with (meta["vae"]), or None. The same
    name is the same VAE. Otherwise, when meta.json records the VAE by content, `vae` is loaded without
    the network (a folder, or a hub name in the local cache) and compared by weights; when it cannot be
    loaded here (a hub name on an offline machine), a shards' VAE folder of the same name as the hub
    model (/local/sd-vae-ft-ema for stabilityai/sd-vae-ft-ema) is taken for a copy of it, with a warning."""
    made = meta["vae"]
    if not vae or made == vae:
        return None
    recorded = recorded_vae(meta)
    if recorded is None:
        return f"data.vae is {vae!r} but the shards were encoded with {made!r}"
    from rfengine.data.vae import load_vae, same_vae, vae_identity
    try:
        named = vae_identity(load_vae(vae, None, "cpu", offline=True))
    except ValueError as e:
        if Path(vae.rstrip("/")).name == Path(str(made).rstrip("/")).name:
            if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:  # said once, not per process
                log.warning("data.vae %r is not on this machine, so it cannot be compared with the VAE the latents were "
                            "made with, %s (weights SHA-256 %s); that folder has its name, so it is taken for a copy",
                            vae, made, recorded["sha256"][:16])
            return None
        return (f"data.vae is {vae!r} but the shards were encoded with {made!r} (weights SHA-256 "
                f"{recorded['sha256'][:16]}), and {vae!r} cannot be loaded here to compare them ({e})")
    if same_vae(named, recorded):
        log.info("data.vae %r is the VAE the latents were made with (%s): the same weights (SHA-256 %s)", vae, made,
                 recorded["sha256"][:16])
        return None
    return (f"data.vae {vae!r} (weights SHA-256 {named['sha256'][:16]}) is not the VAE the shards were encoded "
            f"with, {made!r} (SHA-256 {recorded['sha256'][:16]})")


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
        problems = [p for p in [vae_problem(meta, vae)] if p]
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
        # the VAE that decodes these latents, by name (the config's first) and content (None: not recorded)
        self.vae_names = list(dict.fromkeys(n for n in (vae, meta["vae"]) if n))
        self.vae_identity = recorded_vae(meta)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        flipped = i >= self.n
        i = i % self.n
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        j = i - int(self.offsets[s])
        arr = np.asarray(self.latents[s][j, 1 if flipped else 0], dtype=np.float32)
        return torch.from_numpy(arr * self.scale), torch.tensor(int(self.labels[s][j]), dtype=torch.long)
