"""Synthetic data for throughput and memory measurements: a fixed pool of standard-normal tensors
shaped like the real inputs (for example 4x32x32 ImageNet-256 latents) with random labels, so a
benchmark needs no data set on disk. Seeded: every process and every run sees the same pool."""
from __future__ import annotations

import torch


class SyntheticDataset(torch.utils.data.Dataset):
    """Items: (x (C, S, S) float32 ~ N(0, 1), label int64 in [0, num_classes))."""

    def __init__(self, channels: int, image_size: int, num_classes: int, size: int = 2048, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, channels, image_size, image_size, generator=g)
        self.labels = torch.randint(0, max(num_classes, 1), (size,), generator=g)
        self.num_classes = num_classes
        self.shape = (channels, image_size, image_size)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]
