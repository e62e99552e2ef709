"""What goes into and comes out of a checkpoint besides files: model state dicts loaded strictly (every
mismatch named), wrapper prefixes stripped, every RNG state captured as tensors and plain types, and the
safetensors weight export that loads into a single-process model."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from rfengine.checkpoint.reading import unreadable
from rfengine.storage import write_atomic

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
    """Every random state this process uses, as tensors and plain types (so that a checkpoint loads
    with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's device only: a resume
        state["cuda"] = torch.cuda.get_rng_state()  # may see fewer devices (per-process CUDA_VISIBLE_DEVICES)
    return state


def restore_rng(state: dict) -> None:
    """The random states `capture_rng` took, restored in this process (CUDA's into the current device)."""
    torch.set_rng_state(state["torch"])
    npr = state["numpy"]
    if isinstance(npr, dict):
        npr = (npr["name"], npr["keys"].numpy().astype(np.uint32), npr["pos"], npr["has_gauss"], npr["cached_gaussian"])
    np.random.set_state(npr)  # (or the tuple of checkpoints written before: numpy arrays, read by the allow-list)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():  # into the current device (set from LOCAL_RANK)
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints written before: one state per visible device
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def export_safetensors(state: dict, path: str | Path, metadata: dict) -> Path:
    """Write full (unsharded) weights atomically as safetensors; `metadata` (JSON-able) goes into the
    header under `rfengine` so that the file alone rebuilds the model."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in strip_prefixes(state).items()}

    def write(tmp):
        save_file(tensors, str(tmp), metadata={"rfengine": json.dumps(metadata)})
        os.chmod(tmp, 0o644)
    return write_atomic(path, write)


def read_safetensors(path: str | Path) -> tuple[dict, dict | None]:
    """(state dict, rfengine metadata, or None for a safetensors file rfengine did not write)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("rfengine", "null"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own reasons are short and advise nothing
        raise unreadable(path, "weights file", f"not a readable safetensors file: {e}") from None
    return state, meta if isinstance(meta, dict) else None


def load_safetensors(path: str | Path) -> tuple[dict, dict]:
    """(state dict, rfengine metadata) from a file written by `export_safetensors`."""
    state, meta = read_safetensors(path)
    if meta is None:
        raise ValueError(f"{path} has no rfengine metadata; it was not written by rfengine's export")
    return state, meta
