"""Building a validated `Config` from a nested dict: each value checked against its annotation (converted
only where nothing is lost), its bounds and the rules that span several keys; every error names the full
dotted key, what was expected and what was given, and the nearest valid key for a typo."""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Literal

from rfengine.config.schema import Config, ConfigError


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
    """Rules that span several keys. None looks at files: a config stored in a checkpoint or an export
    must validate on any machine, long after `train.init_from`'s file is gone (a run that starts from it
    checks it then)."""
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {list(cfg.optim.betas)}")
    adr = cfg.objective.adr
    if adr.shift != 1.0 and adr.pairing != "grid":
        raise ConfigError(f"objective.adr.shift: {adr.shift:g} shifts the sampler's grid, which only "
                          "objective.adr.pairing=grid follows; use pairing=grid or shift=1")
    if cfg.data.name in ("folder", "latents") and not cfg.data.path:
        raise ConfigError(f"data.path: required for data.name={cfg.data.name!r}")
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
    if cfg.optim.impl == "apex" and cfg.parallel.mode == "fsdp":
        raise ConfigError("optim.impl: apex is untested with parallel.mode=fsdp (FSDP2's sharded DTensor "
                          "parameters); use optim.impl: torch")
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


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML and checkpoints."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return list(v)
        return v
    return plain(dataclasses.asdict(cfg))
