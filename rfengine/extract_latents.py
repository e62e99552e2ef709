"""Encode an image folder into the latent shards that `data.name: latents` reads (ImageNet-256 and
the like), with a diffusers `AutoencoderKL` given as a local folder or a hub name:

    python -m rfengine.extract_latents --images data/imagenet/train --vae stabilityai/sd-vae-ft-ema \\
        --resolution 256 --out data/imagenet256_latents
    torchrun --nproc_per_node=8 -m rfengine.extract_latents ...   # shards split across processes

Images are centre-cropped and resized like `data.name: folder`, encoded together with their
horizontal flips (F = 2 copies per image, so `data.flip: true` needs no re-encoding), and written
as shards of `--shard-size` images, each file renamed into place when complete. An interrupted
extraction continues where it stopped when run again (complete shards are kept). `meta.json`, written
last, records what the reader checks: vae (the name given) and the VAE by content (vae_config, and
vae_sha256 over its weights: a copy of the same VAE elsewhere is known to be the same), scale_factor,
resolution, flip, channels, latent_size, num_classes. Needs the optional extra: pip install -e ".[latents]".
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from rfengine.data.vae import load_vae, vae_identity

log = logging.getLogger("rfengine")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from rfengine.storage import write_atomic

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, arr)
    write_atomic(path, write)


def _shard_done(out: Path, i: int, n: int) -> bool:
    lat, lab = out / f"latents_{i:05d}.npy", out / f"labels_{i:05d}.npy"
    if not (lat.is_file() and lab.is_file()):
        return False
    try:
        return np.load(lat, mmap_mode="r").shape[0] == n and np.load(lab).shape == (n,)
    except Exception:
        return False


@torch.no_grad()
def extract(images: str, vae_name: str, out: str, *, resolution: int = 256, batch: int = 64, shard_size: int = 10000,
            mode: str = "sample", flip: bool = True, dtype: str = "float16", seed: int = 0, workers: int = 4,
            vae_subfolder: str | None = None, rank: int = 0, world: int = 1,
            device: torch.device | str = "cpu", progress: bool = True) -> Path:
    """Encode every image under `images` (root/<class>/<image>) into shards under `out`. Returns `out`.
    `mode`: 'sample' draws z ~ N(mean, std) once per image (seeded per image, as DiT/SiT do) or 'mean'."""
    from tqdm import tqdm

    from rfengine.data.folder import ImageFolderDataset
    if mode not in ("sample", "mean"):
        raise ValueError(f"--mode: expected sample or mean, got {mode!r}")
    device = torch.device(device)
    ds = ImageFolderDataset(images, resolution)
    vae = load_vae(vae_name, vae_subfolder, device)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    np_dtype = {"float16": np.float16, "float32": np.float32}[dtype]
    n_shards = -(-len(ds) // shard_size)

    def shard_len(i):
        return min(shard_size, len(ds) - i * shard_size)
    mine = [i for i in range(n_shards) if i % world == rank]
    todo = [i for i in mine if not _shard_done(out_dir, i, shard_len(i))]
    if len(todo) < len(mine):
        log.info("extract: %d of this process's %d shards are already complete; continuing", len(mine) - len(todo),
                 len(mine))
    bar = tqdm(total=sum(shard_len(i) for i in todo), desc="encode", unit="img",
               disable=not progress)
    latent_shape = None
    for i in todo:
        idx = list(range(i * shard_size, i * shard_size + shard_len(i)))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch, num_workers=workers)
        lats, labs, pos = [], [], 0
        for x, y in loader:
            x = x.to(device)
            views = [x, x.flip(-1)] if flip else [x]
            per_view = []
            for v in views:
                dist = vae.encode(v).latent_dist
                if mode == "mean":
                    z = dist.mean
                else:  # the image's own seed: the same latent whatever the batch or process layout
                    noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(
                        seed * 10**9 + idx[pos + k])) for k in range(x.shape[0])]).to(device)
                    z = dist.mean + dist.std * noise
                per_view.append(z.float().cpu())
            lats.append(torch.stack(per_view, dim=1).numpy().astype(np_dtype))  # (b, F, C, h, w), unscaled
            labs.append(y.numpy().astype(np.int64))
            pos += x.shape[0]
            bar.update(x.shape[0])
        arr = np.concatenate(lats)
        latent_shape = arr.shape[2:]
        _save_npy(out_dir / f"latents_{i:05d}.npy", arr)
        _save_npy(out_dir / f"labels_{i:05d}.npy", np.concatenate(labs))
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        if latent_shape is None:  # every shard existed already: read the shape back
            latent_shape = np.load(out_dir / "latents_00000.npy", mmap_mode="r").shape[2:]
        if latent_shape[1] != latent_shape[2]:
            raise ValueError(f"latents are {latent_shape[1]}x{latent_shape[2]}; the reader expects square latents")
        identity = vae_identity(vae)
        meta = {"vae": vae_name if not vae_subfolder else f"{vae_name}/{vae_subfolder}",
                "vae_config": identity["config"], "vae_sha256": identity["sha256"],
                "scale_factor": float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215),
                "resolution": resolution, "flip": "both" if flip else "none", "channels": int(latent_shape[0]),
                "latent_size": int(latent_shape[1]), "num_classes": ds.num_classes, "classes": ds.classes,
                "mode": mode, "seed": seed, "dtype": dtype, "images": str(images), "count": len(ds),
                "shards": [{"latents": f"latents_{i:05d}.npy", "labels": f"labels_{i:05d}.npy"}
                           for i in range(n_shards)]}
        from rfengine.storage import write_json
        write_json(out_dir / "meta.json", meta)
        log.info("extract: %d images -> %d shards in %s (latents %s, scale %.5f)", len(ds), n_shards, out_dir,
                 "x".join(map(str, latent_shape)), meta["scale_factor"])
    return out_dir


def main(argv=None) -> int:
    from rfengine import cli, parallel
    from rfengine.telemetry import setup_logging
    p = argparse.ArgumentParser(description="Encode an image folder into latent shards with a diffusers AutoencoderKL.")
    p.add_argument("--images", required=True, help="image folder: root/<class>/<image>")
    p.add_argument("--vae", required=True, help="local AutoencoderKL folder or hub name (stabilityai/sd-vae-ft-ema)")
    p.add_argument("--vae-subfolder", default=None, help="e.g. 'vae' for a whole diffusers pipeline folder")
    p.add_argument("--out", required=True, help="output shard folder (data.path for data.name: latents)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--mode", default="sample", choices=["sample", "mean"])
    p.add_argument("--no-flip", dest="flip", action="store_false", help="skip the flipped copies")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4)
    a = p.parse_args(argv)
    dist = parallel.init_distributed("auto")
    setup_logging(dist.is_main)
    return cli.run(lambda: extract(
        a.images, a.vae, a.out, resolution=a.resolution, batch=a.batch, shard_size=a.shard_size, mode=a.mode,
        flip=a.flip, dtype=a.dtype, seed=a.seed, workers=a.workers, vae_subfolder=a.vae_subfolder,
        rank=dist.rank, world=dist.world, device=dist.device, progress=dist.is_main))

if __name__ == "__main__":
    raise SystemExit(main())
