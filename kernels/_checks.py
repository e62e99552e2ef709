"""Input checks shared by every implementation of the ops: each failure is a ValueError that names
the argument, what was expected and what was given.

Checks of shape, dtype and device read only metadata and always run. Checks of values (times in
[0, 1]) read the tensor back to the host, which on a GPU is a device sync that stalls the queue of
kernels: they run only when value checks are on (`RFENGINE_CHECK_VALUES=1`, or `value_checks(True)`),
as in the test suite and for debugging, never by default on the training path.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch._subclasses.fake_tensor import is_fake

_VALUE_CHECKS: list[bool] = []  # a stack of `value_checks` overrides; empty: the environment decides


def values_checked() -> bool:
    """Whether range checks that read tensor values run (a host read each)."""
    if _VALUE_CHECKS:
        return _VALUE_CHECKS[-1]
    return os.environ.get("RFENGINE_CHECK_VALUES", "0").strip() == "1"


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Turn value (range) checks on or off inside the block, whatever the environment says."""
    _VALUE_CHECKS.append(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.pop()


def check_image(name: str, x, like: torch.Tensor | None = None) -> None:
    """x must be a floating (B, C, H, W) tensor; with `like`, of the same shape and device."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected shape (B, C, H, W), got {tuple(x.shape)}")
    if like is not None:
        if x.shape != like.shape:
            raise ValueError(f"{name}: expected shape {tuple(like.shape)} (like the first input), got {tuple(x.shape)}")
        if x.device != like.device:
            raise ValueError(f"{name}: expected device {like.device} (like the first input), got {x.device}")


def check_per_sample(name: str, v, like: torch.Tensor, *, unit_interval: bool = False) -> None:
    """v must be a floating (B,) tensor on like's device; optionally every entry in [0, 1] (checked
    only when `values_checked()`: the check reads the values back to the host)."""
    b = like.shape[0]
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape ({b},), got {type(v).__name__}")
    if not v.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {v.dtype}")
    if tuple(v.shape) != (b,):
        raise ValueError(f"{name}: expected shape ({b},) (one per sample), got {tuple(v.shape)}")
    if v.device != like.device:
        raise ValueError(f"{name}: expected device {like.device}, got {v.device}")
    # The range check reads the values (a device sync); skip it while torch.compile traces and for
    # fake tensors (the planner's FakeTensorMode step), which have no values.
    if unit_interval and values_checked() and not torch.compiler.is_compiling() and not is_fake(v):
        lo, hi = v.min().item(), v.max().item()
        if lo < 0 or hi > 1:
            raise ValueError(f"{name}: expected values in [0, 1], got min {lo:.4g}, max {hi:.4g}")


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{name}: expected {'>= 0' if allow_zero else '> 0'}, got {value!r}")
