"""Samples at ImageNet scale, on disk. A sampling run is cut into chunks of consecutive sample indices;
the process that makes a chunk writes it as its own shard file (atomically: complete or absent), so a
run started again skips the chunks already written, on any number of processes. One process then
merges the shards, in sample order, into ADM's `.npz`: arr_0 uint8 (N, H, W, C) and, for a
class-conditional model, arr_1 int64 (N,) class labels, as guided-diffusion's `image_sample.py`
writes them (DiT/SiT's `sample_ddp.py` write arr_0 alone). The merge streams each member into the zip
chunk by chunk: no process ever holds more than one chunk of images.

Beside the merged file `<stem>.npz`, while a run is under way:
  <stem>.parts/plan.json           the settings the chunks are made with (a restart must match them)
  <stem>.parts/chunk_000012.npz    chunk 12: samples [12 * chunk, 13 * chunk) (arr_0, arr_1, nfe)
The parts folder is removed once the merged file and its metadata are in place.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from rfengine import storage
from rfengine.eval.npz import NpzWriter


def chunks(count: int, size: int) -> list[range]:
    """The sample indices of each chunk of a run of `count` samples, `size` per chunk (the last shorter)."""
    if count < 1 or size < 1:
        raise ValueError(f"count and chunk size must be >= 1, got count={count}, size={size}")
    return [range(s, min(s + size, count)) for s in range(0, count, size)]


def class_labels(count: int, num_classes: int, seed: int, how: str = "uniform") -> np.ndarray:
    """(count,) int64 class labels of samples 0..count-1. 'uniform': independent uniform draws over the
    classes, as DiT/SiT's sample_ddp.py and ADM's image_sample.py draw them (torch.randint), from one
    stream seeded by `seed` and indexed by sample, so the labels do not depend on the process count or
    the chunking; 'balanced': sample i has class i % num_classes (equal counts)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if how == "uniform":
        return torch.randint(0, num_classes, (count,), generator=torch.Generator().manual_seed(seed)).numpy()
    if how == "balanced":
        return np.arange(count, dtype=np.int64) % num_classes
    raise ValueError(f"--labels: expected uniform or balanced, got {how!r}")


def _chunk_path(parts: Path, j: int) -> Path:
    return parts / f"chunk_{j:06d}.npz"


def open_parts(parts: Path, plan: dict, n_chunks: int) -> list[int]:
    """Create (or reopen) the parts folder of a run with settings `plan` (JSON-able); returns the
    indices of the chunks still to make. A folder made with other settings is refused (ValueError
    naming the differences), since its chunks would mix two sets of samples."""
    parts.mkdir(parents=True, exist_ok=True)
    plan_path = parts / "plan.json"
    if plan_path.is_file():
        try:
            before = json.loads(plan_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{plan_path}: not valid JSON ({e}); delete {parts} and run again") from e
        changed = sorted(k for k in set(before) | set(plan) if before.get(k) != plan.get(k))
        if changed:
            diff = ", ".join(f"{k}: {before.get(k)!r} then, {plan.get(k)!r} now" for k in changed)
            raise ValueError(f"{parts} holds chunks made with other settings ({diff}); run with the same "
                             f"settings to continue, or delete {parts} to start again")
    else:
        storage.write_json(plan_path, plan)
    return [j for j in range(n_chunks) if not _chunk_path(parts, j).is_file()]


def write_chunk(parts: Path, j: int, images: np.ndarray, labels: np.ndarray | None, nfe: int | None) -> Path:
    """Chunk `j` as its shard file, atomically: images (n, H, W, C) uint8, labels (n,) int64 or None, the
    number of model evaluations (adaptive samplers) or None."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images: expected uint8 (n, H, W, C), got {images.dtype} {images.shape}")
    if labels is not None and labels.shape != images.shape[:1]:
        raise ValueError(f"labels: expected ({images.shape[0]},), got {labels.shape}")
    arrays = {"arr_0": images, "nfe": np.int64(-1 if nfe is None else nfe)}
    if labels is not None:
        arrays["arr_1"] = labels.astype(np.int64)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
            np.savez(f, **arrays)
    return storage.write_atomic(_chunk_path(parts, j), write)


def _read_chunk(parts: Path, j: int, rows: range, image_shape: tuple, labelled: bool):
    path = _chunk_path(parts, j)
    redo = f"delete it and run the same command again to make chunk {j} anew"
    try:
        with np.load(path) as f:
            images, nfe = f["arr_0"], int(f["nfe"])
            labels = f["arr_1"] if labelled else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable chunk ({type(e).__name__}: {e}); {redo}") from e
    want = (len(rows), *(image_shape or images.shape[1:]))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape != want:
        raise ValueError(f"{path}: images {images.dtype} {images.shape}, expected uint8 {want}; {redo}")
    if labelled and labels.shape != (len(rows),):
        raise ValueError(f"{path}: {labels.shape} labels for {len(rows)} samples; {redo}")
    return images, labels, (nfe if nfe >= 0 else None)


def merge(parts: Path, plan: list[range], out: Path, labelled: bool, keep_first: int = 100) -> tuple[np.ndarray, list]:
    """Stream the shards of `plan` (every chunk written) into `out`, ADM's .npz (arr_0 uint8 (N, H, W, C),
    arr_1 int64 labels when `labelled`), written atomically; one chunk in memory at a time. Returns the
    first `keep_first` images (N', H, W, C) (for a grid) and each chunk's model-evaluation count (None:
    a fixed grid)."""
    n = plan[-1].stop
    first, nfe, labels = [], [], np.empty(n, dtype=np.int64) if labelled else None
    shape = _read_chunk(parts, 0, plan[0], None, labelled)[0].shape[1:]  # chunk 0's; every chunk must agree

    def images():
        for j, rows in enumerate(plan):
            imgs, labs, count = _read_chunk(parts, j, rows, shape, labelled)
            nfe.append(count)
            if labelled:
                labels[rows.start:rows.stop] = labs
            if rows.start < keep_first:
                first.append(imgs[:keep_first - rows.start].copy())
            yield imgs
            del imgs  # the next chunk is read without this one still held

    def write(tmp):
        first.clear(), nfe.clear()
        with NpzWriter(tmp) as w:
            w.stream("arr_0", (n, *shape), np.uint8, images())
            if labelled:
                w.add("arr_1", labels)
    try:
        storage.write_atomic(out, write)
    except storage.WriteError as e:
        if isinstance(e.__cause__, ValueError):  # a bad chunk, not a failed write: say which
            raise e.__cause__ from None
        raise
    return np.concatenate(first) if first else np.empty((0, *shape), np.uint8), nfe


def remove_parts(parts: Path) -> None:
    """The parts folder, once the merged file holds its chunks."""
    shutil.rmtree(parts, ignore_errors=True)
