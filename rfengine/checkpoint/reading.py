"""Reading checkpoints without running code: `read_pt` (torch.load weights_only=True with a short
allow-list), `load` (a `.pt` file or a sharded folder's `meta.pt`, every failure one ValueError naming the
file), `complete` (whether one loads, without reading its tensors), `latest` (the newest checkpoint of a
folder that loads) and `prune` (which counts complete checkpoints only)."""
from __future__ import annotations

import argparse
import logging
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from rfengine import storage
from rfengine.checkpoint.folder import list_checkpoints

log = logging.getLogger("rfengine")
META = "meta.pt"  # the non-tensor part of a sharded checkpoint


# What a .pt file may hold beyond tensors and plain containers, read without running code: SiT's
# training checkpoints keep their argparse.Namespace under `args`; rfengine checkpoints written
# before the RNG states were stored as tensors hold numpy's Mersenne-Twister state (a uint32 array).
_SAFE_GLOBALS = [argparse.Namespace, np.zeros(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
_BLOCKED = re.compile(r"GLOBAL (\S+)")


class UnsafeFileError(ValueError):
    """A .pt file that could only be read by running code named in it (a pickle global outside the
    allow-list): refused, never skipped as merely damaged."""


def read_pt(path: str | Path, what: str = "checkpoint", mmap: bool = False):
    """A .pt file read onto the CPU without running code: `torch.load(weights_only=True)` with a short
    allow-list (`_SAFE_GLOBALS`); with `mmap` the tensors stay in the file until used (the index and the
    structure are read, not the data). A file that needs a global outside the list raises
    `UnsafeFileError` naming it; any other failure is one ValueError in rfengine's words naming the file
    (torch's own message would advise loading it with weights_only=False)."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = _BLOCKED.search(str(e))
        if found is not None:
            raise UnsafeFileError(
                f"{what} {path} refused: reading it would call {found.group(1)}, code named inside the file. "
                "rfengine reads .pt files without running code (torch.load weights_only=True); a file you trust "
                "can be converted to a plain state dict or a .safetensors file first") from None
    except Exception:  # torch raises many types for a damaged or foreign file
        pass
    raise unreadable(path, what)


def unreadable(path: str | Path, what: str, kind: str | None = None) -> ValueError:
    """The error for a file that is not a checkpoint or weights file rfengine can read; `kind` says what
    is wrong (by default: a torch.save archive that is damaged or truncated, or no such archive at all)."""
    if kind is None:
        try:
            with open(path, "rb") as f:
                zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format is a zip archive
            kind = "a torch.save archive that is damaged or truncated" if zipped else "not a torch.save archive"
        except OSError as e:
            kind = e.strerror or type(e).__name__
    return ValueError(f"{what} {path} is not a checkpoint or weights file that rfengine can read ({kind})")


def load(path: str | Path, mmap: bool = False) -> dict:
    """Read a checkpoint onto the CPU (with `mmap`: its tensors left in the file until used); a missing,
    truncated or foreign file raises a ValueError naming it. For a sharded checkpoint this is its
    `meta.pt` plus `sharded: <folder>`; the tensors are read with `load_sharded` into the layout of the
    run that resumes."""
    path = Path(path)
    if path.is_dir():
        if not (path / ".metadata").is_file() or not (path / META).is_file():
            raise ValueError(f"checkpoint {path} is not a complete sharded checkpoint (no .metadata or {META})")
        meta = read_pt(path / META)
        if not isinstance(meta, dict) or "step" not in meta:
            raise ValueError(f"checkpoint {path} is not an rfengine training checkpoint (no step)")
        return {**meta, "sharded": str(path)}
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    ckpt = read_pt(path, mmap=mmap)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"checkpoint {path} is not an rfengine training checkpoint (no model/step)")
    return ckpt


def complete(path: str | Path) -> bool:
    """Whether the checkpoint at `path` loads, judged without reading its tensors: a .pt file's archive
    index and structure (a truncated or foreign file fails), a sharded folder's `.metadata` and
    `meta.pt`. Costs a small read, not the checkpoint's size."""
    try:
        load(path, mmap=True)
        return True
    except ValueError:  # (UnsafeFileError included: a file that would run code is not a checkpoint to keep)
        return False


def latest(folder: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `folder` that loads, skipping (and reporting) damaged ones. A file that
    would run code (`UnsafeFileError`) is not skipped: it stops the caller."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path)
        except UnsafeFileError:
            raise
        except ValueError as e:
            log.warning("skipping damaged checkpoint: %s", e)
    return None


def prune(folder: str | Path, keep: int) -> None:
    """Delete the checkpoints older than the newest `keep` complete ones (`complete`): a damaged or
    incomplete checkpoint is never counted as kept, so a loadable one is never deleted in its favour (a
    damaged one newer than the kept ones stays until it is older). One that cannot be deleted is a
    warning: the new checkpoint is complete, and the next prune tries again."""
    found, kept = list_checkpoints(folder), 0
    for i in range(len(found) - 1, -1, -1):
        kept += complete(found[i][1])
        if kept == keep:
            break
    else:
        return  # fewer than `keep` complete ones: all stay
    for _, path in found[:i]:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("old checkpoint %s not removed: %s", path, storage.cause(e, path))
