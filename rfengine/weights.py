"""Starting a new run from model weights (`train.init_from`): rfengine checkpoints, sharded folders
and safetensors exports, and the formats SiT/DiT release (a raw state dict under their parameter
names, or a dict holding `model`/`ema`). Apart from checkpoint.py, which writes and resumes the
run's own checkpoints; this reads anyone's weights into a fresh model."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rfengine.checkpoint import UnsafeFileError, load, load_model_state, load_sharded, read_pt, strip_prefixes


def read_weights(path: str | Path, weights: str, template: dict) -> tuple[dict, str]:
    """(state dict, what was read) for `weights` ('ema' or 'raw') from any file that holds model
    weights: an rfengine checkpoint (`.pt` or a sharded folder, read into the full tensors of
    `template`), an rfengine `.safetensors` export, a plain safetensors file, a released SiT/DiT
    checkpoint (a raw state dict, read as the weights it holds) or a dict holding `model`/`ema`
    (SiT's training checkpoints). Wrapper prefixes are stripped; a bad file raises a ValueError."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"init_weights: expected 'ema' or 'raw', got {weights!r}")
    path = Path(path)
    key = "ema" if weights == "ema" else "model"
    if path.is_dir():
        meta = load(path)
        state = load_sharded(meta["sharded"], {key: template})[key]
        return strip_prefixes(state), f"rfengine sharded checkpoint (step {meta['step']}, {weights} weights)"
    if not path.is_file():
        raise ValueError(f"init_from: weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                header = (f.metadata() or {}).get("rfengine")
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"init_from: {path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
        if header is None:
            return strip_prefixes(state), "safetensors weights"
        held = json.loads(header).get("weights", "ema")
        if held != weights:
            raise ValueError(f"init_from: {path} holds the {held} weights, not train.init_weights={weights!r}")
        return strip_prefixes(state), f"rfengine safetensors export ({held} weights)"
    try:
        obj = read_pt(path, "init_from")
    except UnsafeFileError:
        raise
    except Exception as e:
        raise ValueError(f"init_from: {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_prefixes(obj), "raw state dict (released weights)"
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        what = f"rfengine checkpoint (step {obj['step']})" if "step" in obj else "checkpoint"
        return strip_prefixes(obj[key]), f"{what}, {weights} weights"
    found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"init_from: {path} holds no {weights!r} weights (train.init_weights) under '{key}'; "
                     f"it holds {found}")


def init_weights(model: torch.nn.Module, ema: torch.nn.Module, path: str | Path, weights: str) -> str:
    """Load the weights at `path` into a freshly built `model` and its `ema` (step 0, nothing else
    is taken); returns a description of what was loaded. Strict: missing, unexpected and wrongly
    shaped keys are named in one ValueError, and a learn_sigma mismatch says which setting fits."""
    state, what = read_weights(path, weights, model.state_dict())
    own = model.state_dict()
    k = "final_layer.linear.weight"
    if k in state and k in own and state[k].shape[1:] == own[k].shape[1:] and state[k].shape[0] != own[k].shape[0]:
        if state[k].shape[0] == 2 * own[k].shape[0]:
            raise ValueError(f"init_from: {path} predicts 2C output channels (trained with learn_sigma: true); "
                             "set model.learn_sigma: true (the velocity is the first C channels)")
        if 2 * state[k].shape[0] == own[k].shape[0]:
            raise ValueError(f"init_from: {path} predicts C output channels (trained with learn_sigma: false); "
                             "set model.learn_sigma: false")
    source = f"init_from {path}"
    load_model_state(model, state, source)
    load_model_state(ema, state, source)
    return f"{path}: {what}"
