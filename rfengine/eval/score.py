"""FID, sFID, Inception Score and precision/recall of a sample file against a reference, streamed: images are read
and featurised a batch at a time (`NpzImages`), only their features are kept (N x 2048 float32 for
precision/recall: 410 MB at N = 50,000) plus running statistics; no image array larger than one batch exists.

The reference's statistics come from the file where it carries them (`mu`/`sigma`, `mu_s`/`sigma_s`, as ADM's
reference batches do: over the whole training set) and from its `arr_0` images otherwise; its `arr_0` (ADM: 10,000
images) is the reference side of precision/recall. The result says which statistics were used and how many images
stood behind each side.
"""
from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from rfengine.eval.fd import RunningStats, frechet_distance, inception_score, precision_recall
from rfengine.eval.npz import NpzImages, read_stats

log = logging.getLogger("rfengine")
K = 3                  # ADM's neighbourhood size for the precision/recall manifolds
IS_SPLIT = 5000        # ADM's Inception Score split


def to_unit(batch: np.ndarray) -> torch.Tensor:
    """uint8 images (b, H, W, C) -> float32 (b, C, H, W) in [-1, 1], the package's image convention."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1


class ImageSource:
    """The images of `spec`: 'digits' (the embedded set) or an `.npz` with arr_0. `batches(size)` yields [-1, 1]
    float tensors (b, C, H, W) in order; `len()` counts them; `has_images` is False for a statistics-only `.npz`."""

    def __init__(self, spec: str):
        self.spec, self._npz, self._digits = spec, None, None
        if spec == "digits":
            from rfengine.data.digits import DigitsDataset
            self._digits = DigitsDataset(16).images
        elif Path(spec).is_file() and not _has_member(spec, "arr_0"):
            self.has_images = False
            return
        else:
            self._npz = NpzImages(spec)
        self.has_images = True

    def __len__(self) -> int:
        return 0 if not self.has_images else len(self._digits) if self._digits is not None else len(self._npz)

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        if self._digits is not None:
            yield from self._digits.split(size)
        elif self._npz is not None:
            yield from map(to_unit, self._npz.batches(size))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._npz is not None:
            self._npz.close()


def _has_member(path: str, key: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return f"{key}.npy" in z.namelist()
    except zipfile.BadZipFile:
        return True  # let NpzImages name the problem


def featurize(extractor, source: ImageSource, batch: int) -> dict:
    """Streams `source` through `extractor`: {"n", "pool": (N, D) float32, "stats": {"pool": RunningStats,
    "spatial": RunningStats (when the extractor gives spatial features)}}."""
    n = len(source)
    pool = np.empty((n, extractor.dim), np.float32)
    stats: dict[str, RunningStats] = {}
    done = 0
    for x in source.batches(batch):
        out = extractor.extract(x)
        for kind, feats in out.items():
            stats.setdefault(kind, RunningStats()).update(feats)
        pool[done:done + len(x)] = out["pool"]
        if done * 10 // n < (done + len(x)) * 10 // n:
            log.info("features of %s: %d / %d images", source.spec, done + len(x), n)
        done += len(x)
    return {"n": done, "pool": pool, "stats": stats}


def score(samples: str, ref: str, make_extractor, batch: int = 50, pr_batch: int = 1024,
          device: str | torch.device = "cpu") -> dict:
    """FID ("fd" in the digits features), and where the extractor gives spatial features and logits sFID and the
    Inception Score, and ADM's precision/recall of the images in `samples` (.npz) against `ref` ('digits' or an .npz
    with arr_0 and/or mu/sigma, mu_s/sigma_s). `batch`: images per feature batch; `pr_batch`: rows per distance
    block; `device`: where the distances are computed. `make_extractor()` builds the feature network once both files
    have been checked (no weights are read or downloaded for a bad input). Returns the JSON-ready result."""
    with ImageSource(samples) as smp_src, ImageSource(ref) as ref_src:
        file_stats, file_count = ({}, None) if ref == "digits" else read_stats(ref)
        if not smp_src.has_images:
            raise ValueError(f"{samples}: no arr_0 (expected uint8 images N x H x W x C)")
        if not ref_src.has_images and "pool" not in file_stats:
            raise ValueError(f"{ref}: neither arr_0 images nor mu/sigma statistics")
        extractor = make_extractor()
        ref_side = featurize(extractor, ref_src, batch) if ref_src.has_images else None
        smp = featurize(extractor, smp_src, batch)

    metrics, about, notes = {}, {"statistics": {}}, []
    for kind in smp["stats"]:  # pool features, and spatial ones where the network gives them (sFID)
        name = {"pool": "", "spatial": "s"}[kind] + extractor.fd_name
        mu, sigma = smp["stats"][kind].stats()
        if kind in file_stats:
            ref_mu, ref_sigma = file_stats[kind]
            ref_from = {"source": "statistics stored in the reference file", "n": file_count}
        elif ref_side is not None:
            ref_mu, ref_sigma = ref_side["stats"][kind].stats()
            ref_from = {"source": "computed from the reference file's arr_0", "n": ref_side["n"]}
        else:
            metrics[name] = None
            notes.append(f"{name}: the reference file has neither its statistics nor arr_0 images")
            continue
        if ref_mu.shape != mu.shape:
            raise ValueError(f"{ref}: its {name} statistics have {ref_mu.shape[0]} dims, the "
                             f"{extractor.info['network']}'s features {mu.shape[0]} (another feature network?)")
        metrics[name] = frechet_distance(mu, sigma, ref_mu, ref_sigma)
        about["statistics"][name] = {"samples": {"source": "computed from the sample file's arr_0", "n": smp["n"]},
                                     "ref": ref_from}

    if hasattr(extractor, "logits"):
        metrics["inception_score"] = inception_score(extractor.logits, smp["pool"], IS_SPLIT)
        about["inception_score_splits"] = -(-smp["n"] // IS_SPLIT)

    if ref_side is None:
        metrics["precision"] = metrics["recall"] = None
        notes.append("precision/recall: the reference file has no arr_0 images to build its manifold from")
        log.warning("precision/recall not computed: %s has no arr_0 images", ref)
    else:
        metrics["precision"], metrics["recall"] = precision_recall(ref_side["pool"], smp["pool"], K, pr_batch, device)
        about["precision_recall"] = {"k": K, "n_ref": ref_side["n"], "n_samples": smp["n"]}
    if extractor.info.get("published_weights") is False:
        notes.append("the inception weights are not the published file: not comparable with published numbers")
    return {**metrics, "n_samples": smp["n"], "samples": str(samples), "ref": str(ref), **about,
            "features": extractor.info, "notes": notes}
