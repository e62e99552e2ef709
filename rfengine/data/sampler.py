"""A deterministic, resumable, rank-sharded batch sampler.

Global batch b of the run is a pure function of (seed, b): epoch e = b // batches_per_epoch uses
the permutation drawn from seed + e, and rank r takes its slice of that global batch. So resuming at
step b needs nothing but b, whatever the number of data workers. With flips on, each drawn index i
becomes i + n when its (equally deterministic) flip bit is set; data sets read i >= n as the
horizontally flipped copy.
"""
from __future__ import annotations

import torch


class ShardedBatchSampler:
    """Yields lists of local indices (length global_batch // world) forever, from `start_batch`."""

    def __init__(self, n: int, global_batch: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 flip: bool = False, start_batch: int = 0):
        if global_batch % world:
            raise ValueError(f"train.batch_size: {global_batch} is not divisible by the {world} processes")
        if global_batch > n:
            raise ValueError(f"train.batch_size: {global_batch} is larger than the data set ({n} items)")
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.local = global_batch // world
        self.seed, self.flip, self.start_batch = seed, flip, start_batch
        self.per_epoch = n // global_batch  # the ragged tail of each epoch is dropped

    def _epoch(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.flip:
            perm = perm + self.n * torch.randint(0, 2, (self.n,), generator=g)
        return perm

    def __iter__(self):
        b = self.start_batch
        epoch, perm = None, None
        while True:
            e, k = divmod(b, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self._epoch(e)
            lo = k * self.global_batch + self.rank * self.local
            yield perm[lo: lo + self.local].tolist()
            b += 1


class HFlip(torch.utils.data.Dataset):
    """Wraps an image data set so that index i + len(base) is the horizontally flipped image i."""

    def __init__(self, base):
        self.base = base
        self.num_classes, self.shape = base.num_classes, base.shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        n = len(self.base)
        x, y = self.base[i % n]
        return (torch.flip(x, dims=[-1]) if i >= n else x), y
