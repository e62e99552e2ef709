"""A reference file in ADM's format made from an image folder: `mu`/`sigma` and `mu_s`/`sigma_s` over every image,
`arr_0` a random subset (10,000 by default, as ADM's reference batches hold) for precision/recall, and `stats_count`,
the number of images behind the statistics (ADM's files do not record it; their evaluator ignores the extra member).

Images go through the package's own preprocessing (`rfengine.data.folder`: bicubic resize of the short side, centre
crop), the one a run on that folder trains on. ADM's reference batches were made with ADM's `center_crop_arr`
(box-filter halving, then bicubic): a file made here measures a model against its own training data, not against
ADM's file, and its numbers differ from ones against `VIRTUAL_imagenet256_labeled.npz`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from rfengine import storage
from rfengine.eval.fd import RunningStats
from rfengine.eval.npz import STATS_KEYS, NpzWriter

log = logging.getLogger("rfengine")


def make_reference(folder: str | Path, out: str | Path, extractor, size: int = 256, count: int = 10_000,
                   batch: int = 50, workers: int = 4, seed: int = 0) -> dict:
    """Writes `out` (atomically) from the class-folder images under `folder` (root/<class>/<image>) at `size` x
    `size`: statistics of `extractor`'s features over all of them, `count` of them (chosen with `seed`, in folder
    order) as uint8 arr_0. Memory holds one batch of images. Returns {"n", "arr_0", "out"}."""
    from rfengine.data.folder import ImageFolderDataset
    dataset = ImageFolderDataset(folder, size)
    n = len(dataset)
    keep = np.zeros(n, bool)
    keep[np.random.default_rng(seed).choice(n, min(count, n), replace=False)] = True
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False)
    stats: dict[str, RunningStats] = {}

    def kept_images():
        done = 0
        for x, _ in loader:
            for kind, feats in extractor.extract(x).items():
                stats.setdefault(kind, RunningStats()).update(feats)
            chosen = keep[done:done + len(x)]
            if chosen.any():
                yield ((x[torch.from_numpy(chosen)] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) \
                    .permute(0, 2, 3, 1).numpy()                                     # (b, size, size, 3)
            done += len(x)
            if done * 10 // n > (done - len(x)) * 10 // n:
                log.info("reference: %d / %d images", done, n)

    def write(tmp):
        with NpzWriter(tmp) as w:
            w.stream("arr_0", (int(keep.sum()), size, size, 3), np.uint8, kept_images())
            for kind, running in stats.items():
                for key, value in zip(STATS_KEYS[kind], running.stats()):
                    w.add(key, value)
            w.add("stats_count", np.array(n))

    storage.write_atomic(out, write)
    return {"n": n, "arr_0": int(keep.sum()), "out": str(out)}
