"""Reading checkpoints without running code: `read_pt` (torch.load weights_only=True with a short
allow-list), `load` (a `.pt` file or a sharded folder's `meta.pt`, every failure one ValueError naming the
file) and `latest` (the newest checkpoint of a folder that loads)."""
from __future__ import annotations

import argparse
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import torch

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


def read_pt(path: str | Path, what: str = "checkpoint"):
    """A .pt file read onto the CPU without running code: `torch.load(weights_only=True)` with a short
    allow-list (`_SAFE_GLOBALS`). A file that needs anything else raises `UnsafeFileError` naming the
    global it asked for; any other failure propagates."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _BLOCKED.search(str(e))
        if found is None:
            raise
        raise UnsafeFileError(
            f"{what} {path} refused: reading it would call {found.group(1)}, code named inside the file. rfengine "
            "reads .pt files without running code (torch.load weights_only=True); a file you trust can be "
            "converted to a plain state dict or a .safetensors file first") from None


def load(path: str | Path) -> dict:
    """Read a checkpoint onto the CPU; a missing, truncated or foreign file raises a ValueError naming it.
    For a sharded checkpoint this is its `meta.pt` plus `sharded: <folder>`; the tensors are read with
    `load_sharded` into the layout of the run that resumes."""
    path = Path(path)
    if path.is_dir():
        if not (path / ".metadata").is_file() or not (path / META).is_file():
            raise ValueError(f"checkpoint {path} is not a complete sharded checkpoint (no .metadata or {META})")
        try:
            meta = read_pt(path / META)
        except UnsafeFileError:
            raise
        except Exception as e:
            raise ValueError(f"checkpoint {path}/{META} is corrupt ({type(e).__name__}: {e})") from e
        if not isinstance(meta, dict) or "step" not in meta:
            raise ValueError(f"checkpoint {path} is not an rfengine training checkpoint (no step)")
        return {**meta, "sharded": str(path)}
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = read_pt(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # torch raises several types for a damaged archive
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"checkpoint {path} is not an rfengine training checkpoint (no model/step)")
    return ckpt


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
