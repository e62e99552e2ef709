"""rfengine's custom ops, dispatched by device and `RFENGINE_KERNELS`.

Backends, in order of preference:
  triton     fused Triton kernels: CUDA tensors (CPU tensors only under TRITON_INTERPRET=1);
             not yet implemented, so every call goes to the reference for now.
  reference  plain PyTorch (kernels/reference.py), any device: the definition.
`RFENGINE_KERNELS=reference|triton` forces one; unset or `auto` picks per call. The choice is
logged once. This package never imports rfengine.
"""
from __future__ import annotations

import logging
import os

from kernels import reference
from kernels.reference import EPS_FC, EPS_NORM, EPS_T, fc_lowpass, fc_mask, fc_weight

log = logging.getLogger("rfengine.kernels")
_VALID = ("auto", "reference", "triton")
_logged: set[str] = set()


def backend() -> str:
    """The backend the environment asks for, validated."""
    choice = os.environ.get("RFENGINE_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _VALID:
        raise ValueError(f"RFENGINE_KERNELS: expected one of {', '.join(_VALID)}, got {choice!r}")
    if choice == "triton":
        raise NotImplementedError(
            "RFENGINE_KERNELS=triton: the fused Triton kernels are not implemented yet; "
            "use RFENGINE_KERNELS=reference or leave it unset")
    return "reference"


def _impl(name: str):
    chosen = backend()
    if chosen not in _logged:
        _logged.add(chosen)
        log.info("rfengine kernels: using the %s backend", chosen)
    return getattr(reference, name)


def adr_euler_step(xhat, v, h, *, x0=None, x1=None, t=None):
    """See kernels.reference.adr_euler_step."""
    return _impl("adr_euler_step")(xhat, v, h, x0=x0, x1=x1, t=t)


def fc_weighted_mse(pred, target, delta, *, mask="circle", cutoff=0.25, alpha=1.0, t=None, t_max=1.0,
                    reduction="mean"):
    """See kernels.reference.fc_weighted_mse."""
    return _impl("fc_weighted_mse")(pred, target, delta, mask=mask, cutoff=cutoff, alpha=alpha, t=t,
                                    t_max=t_max, reduction=reduction)


def adr_loss(v_hat, uhat, t, *, kind="x1", reduction="mean"):
    """See kernels.reference.adr_loss."""
    return _impl("adr_loss")(v_hat, uhat, t, kind=kind, reduction=reduction)


__all__ = ["adr_euler_step", "fc_weighted_mse", "adr_loss", "fc_lowpass", "fc_mask", "fc_weight",
           "backend", "EPS_T", "EPS_NORM", "EPS_FC"]
