"""Typed run configuration: dataclasses loaded from YAML, overridden by `--set key=value`, validated
before any work starts.

Every field's type comes from its annotation; `Literal[...]` lists the allowed values and a field's
`metadata` may carry bounds (`ge`, `gt`, `le`, `lt`). Errors name the full dotted key, what was
expected and what was given, and suggest the nearest valid key for a typo.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range."""


def _bound(default, **bounds):
    return field(default=default, metadata=bounds)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    """The DiT/SiT network; input shape and class count come from the data set."""
    arch: str = "DiT-T/2"
    learn_sigma: bool = False
    class_dropout: float = _bound(0.1, ge=0.0, le=1.0)
    class_conditional: bool = True
    attention: Literal["sdpa", "xformers", "math"] = "sdpa"


@dataclass
class DataConfig:
    """Where images come from. `digits` is embedded; `folder` and `latents` read `path`; `synthetic`
    is random tensors of `channels` x image_size^2 with `num_classes` labels (for benchmarks)."""
    name: Literal["digits", "folder", "latents", "synthetic"] = "digits"
    path: str = ""
    image_size: int = _bound(16, gt=0)
    flip: bool = False
    num_workers: int = _bound(0, ge=0)
    # Synthetic data only.
    channels: int = _bound(4, ge=1)
    num_classes: int = _bound(1000, ge=0)
    # Latent shards only: the metadata the shards must agree with.
    vae: str = ""
    scale_factor: float = _bound(0.18215, gt=0.0)


@dataclass
class ADRConfig:
    """Anti-Drift Rectification (SPEC section 3, steps 1-5)."""
    steps: int = _bound(1, ge=1)
    pairing: Literal["grid", "uniform"] = "grid"
    infer_steps: int = _bound(10, ge=1)
    prob: float = _bound(1.0, ge=0.0, le=1.0)
    loss: Literal["x1", "mse", "direction"] = "x1"
    weight: float = _bound(1.0, ge=0.0)
    grad_through_rollout: bool = False


@dataclass
class FCConfig:
    """Frequency Compensation (SPEC section 3, steps 6-7)."""
    # velocity: sg(v(x_t)) - sg(v(xhat)); input: xhat - x_t; self: sg(v(x_t) - u), the training forward's
    # own error (no rollout, no extra forward: SPEC section 4.2)
    bias_space: Literal["velocity", "input", "self"] = "velocity"
    mask: Literal["circle", "box", "gaussian", "none"] = "circle"
    cutoff: float = _bound(0.25, gt=0.0)
    alpha: float = _bound(1.0, ge=0.0)
    t_max: float = _bound(1.0, ge=0.0, le=1.0)
    weight: float = _bound(1.0, ge=0.0)


@dataclass
class IPConfig:
    """Input perturbation baseline (SPEC section 4)."""
    gamma: float = _bound(0.1, ge=0.0)


@dataclass
class ObjectiveConfig:
    """Which training objective and its switches."""
    name: Literal["fm", "ip", "ss", "reflexflow"] = "fm"
    time_sampler: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = _bound(1.0, gt=0.0)
    # The FM branch's per-sample weight over t (SPEC section 4.1): none, or Min-SNR-gamma for the velocity
    # loss, min(t^2, gamma*(1-t)^2)/c with c its mean under time_sampler.
    weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = _bound(5.0, gt=0.0)
    # LightningDiT's cosine velocity loss added to the FM branch: cosine_weight * mean_b(1 - cos(v_b, u_b)).
    cosine_weight: float = _bound(0.0, ge=0.0)
    # Run the clean and drifted gradient branches as one concatenated model call.
    concat_branches: bool = True
    # Plain FM before this step (a step if >= 1, a fraction of train.steps if < 1; 0: from the start),
    # then this objective, with adr.prob ramped linearly from 0 over `ramp` steps (same units).
    start: float = _bound(0.0, ge=0.0)
    ramp: float = _bound(0.0, ge=0.0)
    adr: ADRConfig = field(default_factory=ADRConfig)
    fc: FCConfig = field(default_factory=FCConfig)
    ip: IPConfig = field(default_factory=IPConfig)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, gradient clipping and an EMA of the weights."""
    lr: float = _bound(1e-4, gt=0.0)
    betas: tuple = (0.9, 0.999)
    weight_decay: float = _bound(0.0, ge=0.0)
    warmup_steps: int = _bound(0, ge=0)
    grad_clip: float = _bound(1.0, ge=0.0)
    ema_decay: float = _bound(0.9999, ge=0.0, le=1.0)


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, logging and checkpoint cadence."""
    steps: int = _bound(1000, ge=1)
    batch_size: int = _bound(64, ge=1)
    out_dir: str = "runs/default"
    seed: int = _bound(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    log_every: int = _bound(50, ge=1)
    ckpt_every: int = _bound(1000, ge=1)
    sample_every: int = _bound(1000, ge=1)
    keep_ckpts: int = _bound(3, ge=1)
    # Write single-file checkpoints in a background thread (the loop pays for a copy of the state).
    async_ckpt: bool = True
    max_bad_steps: int = _bound(10, ge=1)
    progress: bool = True
    compile: bool = False
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    tensorboard: bool = True
    # Dense peak TFLOP/s of one device for MFU; 0 looks the device up in telemetry.PEAK_TFLOPS.
    peak_tflops: float = _bound(0.0, ge=0.0)
    # Start a new run (step 0, fresh optimizer and schedule) from the model weights in this file:
    # an rfengine checkpoint, sharded folder or safetensors export, or a released SiT/DiT checkpoint.
    init_from: str = ""
    init_weights: Literal["ema", "raw"] = "ema"


@dataclass
class SampleConfig:
    """Sampler used for the grids written during training (and the sampling CLI's defaults)."""
    method: Literal["euler", "heun"] = "euler"
    steps: int = _bound(50, ge=1)
    cfg_scale: float = _bound(1.0, ge=0.0)
    shift: float = _bound(1.0, gt=0.0)
    num_images: int = _bound(64, ge=1)


@dataclass
class ParallelConfig:
    """How processes cooperate: `ddp` replicates the model (single-file checkpoints); `fsdp` shards
    parameters, gradients, optimizer state and EMA per DiT block (FSDP2; sharded checkpoints)."""
    mode: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "nccl", "gloo"] = "auto"


@dataclass
class Config:
    """A whole run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


# ---------------------------------------------------------------------------------------------
# Building and validation
# ---------------------------------------------------------------------------------------------

def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check `value` against the annotation `typ`, converting only where no information is lost."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; allowed values are {', '.join(map(repr, allowed))}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(float(v) for v in value)
    else:  # pragma: no cover - a programming error in this file
        raise TypeError(f"unsupported config annotation {typ} for {key}")
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")


def _check_bounds(key: str, value: Any, meta: dict) -> None:
    checks = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
              "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for name, (ok, sym) in checks.items():
        if name in meta and not ok(value, meta[name]):
            raise ConfigError(f"{key}: got {value!r}; must be {sym} {meta[name]}")


def _unknown_key(prefix: str, name: str, valid: list[str]) -> ConfigError:
    near = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
    return ConfigError(f"unknown config key '{prefix}{name}'{hint} Valid keys here: {', '.join(valid)}")


def _build(cls, data: dict, prefix: str = ""):
    """Make a `cls` instance from a nested dict, validating every key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise _unknown_key(prefix, name, list(fields))
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, data.get(name, {}) or {}, key + ".")
            continue
        if name in data:
            value = _coerce(key, data[name], typ)
        else:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        _check_bounds(key, value, f.metadata)
        kwargs[name] = value
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    """Rules that span several keys."""
    if cfg.optim.grad_clip < 0:
        raise ConfigError("optim.grad_clip: must be >= 0 (0 disables clipping)")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {list(cfg.optim.betas)}")
    if cfg.data.name in ("folder", "latents") and not cfg.data.path:
        raise ConfigError(f"data.path: required for data.name={cfg.data.name!r}")
    if cfg.train.init_from and not Path(cfg.train.init_from).exists():
        raise ConfigError(f"train.init_from: no such file or folder: {cfg.train.init_from}")
    for name in ("start", "ramp"):
        value = getattr(cfg.objective, name)
        if value >= 1 and value != int(value):
            raise ConfigError(f"objective.{name}: got {value}; a step (a whole number >= 1) or a fraction < 1")
    start = resolve_steps(cfg.objective.start, cfg.train.steps)
    if start and cfg.objective.name == "fm":
        raise ConfigError("objective.start: the schedule switches from fm to another objective; "
                          "objective.name is fm")
    if start >= cfg.train.steps:
        raise ConfigError(f"objective.start: step {start} is not before train.steps={cfg.train.steps}; "
                          f"{cfg.objective.name} would never run")
    from rfengine.models import MODEL_SIZES  # the registry is the one source of valid names
    if cfg.model.arch not in MODEL_SIZES:
        near = difflib.get_close_matches(cfg.model.arch, list(MODEL_SIZES), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"model.arch: unknown {cfg.model.arch!r}{hint}; valid: {', '.join(MODEL_SIZES)}")


def resolve_steps(value: float, total: int) -> int:
    """A step count given as a step (>= 1) or as a fraction of `total` (< 1), as `objective.start`. A
    fraction never reaches `total` (0.88 of 4 steps is step 3, not 4), so a short smoke run of a
    config still crosses its switch."""
    if value >= 1:
        return int(value)
    return min(int(round(value * total)), max(total - 1, 0))


def from_dict(data: dict) -> Config:
    """Validate a nested dict into a Config."""
    cfg = _build(Config, data or {})
    _cross_checks(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {text!r}: the key must be dotted, like train.steps")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to a nested dict (validation happens in `from_dict`)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping (plain YAML keeps the last one silently)."""


def _mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"{mark.name}:{mark.line + 1}:{mark.column + 1}: duplicated key {key!r} "
                              f"(first at line {seen[key] + 1}); write each key once")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: Path) -> dict:
    """One YAML file as a dict; a syntax error, a tab or a duplicated key is one ConfigError line
    with the file, line and column."""
    try:
        with open(path) as f:  # a file stream: YAML's marks (and so the messages) name the file
            data = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        lines = path.read_text().splitlines()
        tab = mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]
        raise ConfigError(f"{where}: invalid YAML: {e.problem or e.context}"
                          + (" (a tab: YAML indents with spaces only)" if tab else "")) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: sections merge key by key, values replace."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def compose(path: str | Path, chain: tuple = ()) -> dict:
    """A config file resolved through its `base:` (a path relative to the file that names it, itself
    possibly based on another): the base's settings with this file's on top."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (f" (the base of {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"{p}: circular base: {' -> '.join(str(c) for c in (*chain, p.resolve()))}")
    data = read_yaml(p)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: base: expected the path of another config file, got {base!r}")
    return merge(compose(p.parent / base, (*chain, p.resolve())), data)


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (resolving `base:`), or start from defaults; apply overrides; validate."""
    data = compose(path) if path is not None else {}
    return from_dict(apply_overrides(data, list(overrides)))


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML and checkpoints."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return list(v)
        return v
    return plain(dataclasses.asdict(cfg))


def save(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
