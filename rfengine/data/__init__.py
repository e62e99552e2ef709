"""Data sets and the resumable loader. `build_dataset(cfg)` is the one entry point."""
from __future__ import annotations

import torch

from rfengine.data.digits import DigitsDataset
from rfengine.data.folder import ImageFolderDataset
from rfengine.data.latents import LatentShardDataset
from rfengine.data.sampler import HFlip, ShardedBatchSampler
from rfengine.data.synthetic import SyntheticDataset


def build_dataset(cfg):
    """Data set for a `DataConfig`; it has `.shape` (C, H, W) and `.num_classes`."""
    if cfg.name == "digits":
        ds = DigitsDataset(cfg.image_size)
    elif cfg.name == "folder":
        ds = ImageFolderDataset(cfg.path, cfg.image_size)
    elif cfg.name == "latents":
        # image_size is the pixel resolution the latents were encoded from
        return LatentShardDataset(cfg.path, vae=cfg.vae, scale_factor=cfg.scale_factor,
                                  resolution=cfg.image_size, flip=cfg.flip)
    elif cfg.name == "synthetic":
        ds = SyntheticDataset(cfg.channels, cfg.image_size, cfg.num_classes)
    else:
        raise ValueError(f"data.name: unknown {cfg.name!r}")
    return HFlip(ds) if cfg.flip else ds


def expected_shape(cfg) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and class count of the model a `Config` describes, without reading the data where the
    config says them (latents: 4 x image_size/8; synthetic: as configured; an image folder: RGB at
    image_size, 1000 label rows); 0 classes for an unconditional model."""
    if cfg.data.name == "latents":
        side = cfg.data.image_size // 8
        shape, classes = (4, side, side), cfg.data.num_classes
    elif cfg.data.name == "synthetic":
        shape, classes = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size), cfg.data.num_classes
    elif cfg.data.name == "digits":
        ds = build_dataset(cfg.data)
        shape, classes = ds.shape, ds.num_classes
    else:
        shape, classes = (3, cfg.data.image_size, cfg.data.image_size), cfg.data.num_classes
    return shape, (classes if cfg.model.class_conditional else 0)


def batches(dataset, global_batch: int, *, rank: int, world: int, seed: int, flip: bool,
            start_batch: int = 0, num_workers: int = 0, device: torch.device | str = "cpu"):
    """Endless iterator of (x (B, C, H, W), y (B,)) batches on `device`, starting at `start_batch`."""
    sampler = ShardedBatchSampler(len(dataset), global_batch, rank=rank, world=world, seed=seed,
                                  flip=flip, start_batch=start_batch)
    # The loader's own generator: creating its iterator must not draw from the global RNG, which
    # carries the training noise and is restored exactly on resume.
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed * 1000 + rank + start_batch),
        pin_memory=torch.device(device).type == "cuda", persistent_workers=num_workers > 0)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


__all__ = ["build_dataset", "batches", "DigitsDataset", "ImageFolderDataset", "LatentShardDataset",
           "ShardedBatchSampler", "HFlip", "SyntheticDataset"]
