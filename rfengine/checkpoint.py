"""Checkpoints: atomic writes, discovery of the newest complete one, pruning, and state-dict
loading that names every mismatch.

A checkpoint is one file `checkpoints/step_XXXXXXXX.pt` holding a dict: step, model, ema,
optimizer, scheduler, rng (one entry per rank), config, code_version, world_size. It is written to
a hidden temporary name, flushed and fsynced, then renamed over the final name and the folder
fsynced, so a crash leaves either the old set of checkpoints or the new one, never a torn file
under a checkpoint name.
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("rfengine")
_NAME = re.compile(r"^step_(\d{8})\.pt$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def save_atomic(obj, path: str | Path, before_rename=None) -> Path:
    """torch.save `obj` to `path` so that `path` is either absent, the old file or the complete new one.
    `before_rename(tmp_path)`, if given, runs between the fsync and the rename (the crash tests use it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint, oldest first (temporary files never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load(path: str | Path) -> dict:
    """Read a checkpoint onto the CPU; a missing, truncated or foreign file raises a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a damaged archive
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"checkpoint {path} is not an rfengine training checkpoint (no model/step)")
    return ckpt


def latest(folder: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `folder` that loads, skipping (and reporting) damaged ones."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path)
        except ValueError as e:
            log.warning("skipping damaged checkpoint: %s", e)
    return None


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write; returns what was removed."""
    folder = Path(folder)
    gone = sorted(folder.glob(".step_*.pt.tmp-*")) if folder.is_dir() else []
    for p in gone:
        p.unlink(missing_ok=True)
        log.warning("removed an incomplete checkpoint left by a crashed writer: %s", p.name)
    return gone


def prune(folder: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)


def strip_prefixes(state: dict) -> dict:
    """Remove DDP (`module.`) and torch.compile (`_orig_mod.`) wrapper prefixes from parameter names."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_model_state(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Load weights strictly; a mismatch raises a ValueError naming missing, unexpected and
    wrongly shaped keys (for example a checkpoint from another model config)."""
    state = strip_prefixes(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(f"{title} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        raise ValueError(f"{source} does not match this model: " + "; ".join(parts))
    model.load_state_dict(state)


def capture_rng() -> dict:
    """Every random state this process uses."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
