"""Every read of model weights: starting a new run from weights (`train.init_from`), sampling
(`rfengine.sample`), exporting (`rfengine.export`) and the studies' scoring all come through here.

Sources: rfengine checkpoints (`.pt`, or a sharded folder read into full tensors), rfengine `.safetensors`
exports (their header holds the config), and the formats SiT/DiT release (a raw state dict under their
parameter names, a plain safetensors file, or a training checkpoint holding `model`/`ema`/`opt`/`args`).
A file that carries its own config rebuilds its model alone; released weights need a config saying which
model they fit. Every `.pt` is read without running code (`checkpoint.read_pt`), and a run folder's
newest checkpoint is the newest one that loads (`checkpoint.latest`), damaged ones skipped the same way
everywhere.
"""
from __future__ import annotations

from pathlib import Path

import torch

from rfengine import checkpoint
from rfengine.checkpoint import load_model_state, load_sharded, strip_prefixes


def resolve(run: str | Path | None, ckpt: str | Path | None) -> Path:
    """The weights a command reads: the file or folder `ckpt`, or the newest checkpoint of the run folder
    `run` that loads (damaged ones are skipped with a warning, as `--resume auto` skips them)."""
    if bool(run) == bool(ckpt):
        raise ValueError("pass exactly one of --run-dir DIR or --ckpt PATH")
    if ckpt:
        return Path(ckpt)
    folder = Path(run) / "checkpoints"
    found = checkpoint.latest(folder)
    if found is None:
        raise FileNotFoundError(f"no checkpoint that loads in {folder}")
    return found[0]


def _key(weights: str) -> str:
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights: expected 'ema' or 'raw', got {weights!r}")
    return "ema" if weights == "ema" else "model"


def read(path: str | Path, weights: str = "ema") -> tuple[dict | None, dict | None, str]:
    """(state dict or None for a sharded checkpoint, rfengine metadata or None for released weights, what
    was read) for `weights` ('ema' or 'raw') from any file that holds model weights. Wrapper prefixes are
    stripped; a bad file raises a ValueError naming it."""
    key, path = _key(weights), Path(path)
    if path.is_dir():
        meta = checkpoint.load(path)
        return None, meta, f"rfengine sharded checkpoint (step {meta['step']}, {weights} weights)"
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        state, meta = checkpoint.read_safetensors(path)
        if meta is None:
            return strip_prefixes(state), None, "safetensors weights"
        held = meta.get("weights", "ema")
        if held != weights:
            raise ValueError(f"{path} holds the {held} weights, not {weights!r}")
        return strip_prefixes(state), meta, f"rfengine safetensors export ({held} weights)"
    obj = checkpoint.read_pt(path, "weights file")
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_prefixes(obj), None, "raw state dict (released weights)"
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        own = "step" in obj and "config" in obj
        what = f"rfengine checkpoint (step {obj['step']})" if own else "checkpoint (released, SiT/DiT training format)"
        return strip_prefixes(obj[key]), (obj if own else None), f"{what}, {weights} weights"
    found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{path} holds no {weights!r} weights under '{key}'; it holds {found}")


def check_learn_sigma(state: dict, own: dict, path) -> None:
    """A released checkpoint trained with (or without) learn_sigma says which setting fits it."""
    k = "final_layer.linear.weight"
    if k in state and k in own and state[k].shape[1:] == own[k].shape[1:] and state[k].shape[0] != own[k].shape[0]:
        if state[k].shape[0] == 2 * own[k].shape[0]:
            raise ValueError(f"{path} predicts 2C output channels (trained with learn_sigma: true); "
                             "set model.learn_sigma: true (the velocity is the first C channels)")
        if 2 * state[k].shape[0] == own[k].shape[0]:
            raise ValueError(f"{path} predicts C output channels (trained with learn_sigma: false); "
                             "set model.learn_sigma: false")


def init_weights(model: torch.nn.Module, ema: torch.nn.Module, path: str | Path, weights: str) -> str:
    """`train.init_from`: the weights at `path` into a freshly built `model` and its `ema` (step 0,
    nothing else is taken); returns a description of what was loaded. Strict: missing, unexpected and
    wrongly shaped keys are named in one ValueError, and a learn_sigma mismatch says which setting fits."""
    if not Path(path).exists():
        raise ValueError(f"train.init_from: no such file or folder: {path}")
    state, meta, what = read(path, weights)
    if state is None:  # sharded: read into the full tensors of this model
        state = strip_prefixes(load_sharded(meta["sharded"], {_key(weights): model.state_dict()})[_key(weights)])
    check_learn_sigma(state, model.state_dict(), f"init_from: {path}")
    source = f"init_from {path}"
    load_model_state(model, state, source)
    load_model_state(ema, state, source)
    return f"{path}: {what}"


def _shape_from_state(state: dict, cfg) -> tuple[tuple[int, int, int], int]:
    """Older rfengine files without data_shape: from the patch embedding and position table (square)."""
    hidden, c, p, _ = state["x_embedder.proj.weight"].shape
    side = int(round(state["pos_embed"].shape[1] ** 0.5)) * p
    rows = state["y_embedder.embedding_table.weight"].shape[0] if "y_embedder.embedding_table.weight" in state else 0
    return (c, side, side), max(rows - int(cfg.model.class_dropout > 0), 0)


def load_model(path: str | Path, weights: str = "ema", cfg=None):
    """(model in eval mode on the CPU, config, data shape (C, H, W), metadata) from any weights file.
    rfengine checkpoints and exports rebuild their model from what they hold; released weights (SiT/DiT)
    are built from `cfg` (a `Config`: model.arch, model.learn_sigma, the data's shape and classes) and
    refused without one. A `cfg` given for an rfengine file must describe the same model."""
    from rfengine import config as config_lib
    from rfengine.data import expected_shape
    from rfengine.models import build_model
    state, meta, what = read(path, weights)
    if meta is not None:
        own_cfg = config_lib.from_dict(meta["config"])
        if "data_shape" in meta:
            shape, classes = tuple(meta["data_shape"]), int(meta["num_classes"])
        else:
            shape, classes = _shape_from_state(state, own_cfg)
        cfg = own_cfg
    elif cfg is None:
        raise ValueError(f"{path} holds {what} without an rfengine config; say which model they fit with "
                         "--config CONFIG (model.arch, model.learn_sigma, data.name/image_size; e.g. "
                         "configs/imagenet256_fm.yaml --set model.arch=SiT-XL/2 --set model.learn_sigma=true)")
    else:
        shape, classes = expected_shape(cfg)
    model = build_model(cfg.model.arch, in_channels=shape[0], input_size=shape[1:], num_classes=classes,
                        learn_sigma=cfg.model.learn_sigma, class_dropout=cfg.model.class_dropout,
                        attention=cfg.model.attention)
    if state is None:  # sharded: read the whole tensors into this one-process model
        state = strip_prefixes(load_sharded(meta["sharded"], {_key(weights): model.state_dict()})[_key(weights)])
    check_learn_sigma(state, model.state_dict(), str(path))
    load_model_state(model, state, f"{path} ({weights})")
    return model.eval(), cfg, shape, (meta if meta is not None else {"source": what})
