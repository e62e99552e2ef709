"""rfengine's custom ops, dispatched by device and `RFENGINE_KERNELS`.

Backends:
  triton     fused Triton kernels (kernels/fused, registered as torch.library ops in kernels/ops.py):
             CUDA tensors; CPU tensors only under TRITON_INTERPRET=1 (the interpreter, for tests).
  reference  plain PyTorch (kernels/reference.py), any device: the definition.
`RFENGINE_KERNELS=auto` (default) picks Triton for CUDA tensors and the reference otherwise;
`=triton` or `=reference` forces one. The backend used is logged once per backend.

The fused ops take contiguous (B, C, H, W) tensors of a floating dtype (fp16, bf16, fp32, fp64;
mixed is allowed, accumulation is fp32 or fp64) on one device; anything else is a ValueError naming
the argument. Gradients flow to the image tensors (xhat, v, x0, x1 / pred / v_hat), never to the
per-sample times h and t. This package never imports rfengine.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

from kernels import reference
from kernels._checks import check_choice, check_image, check_per_sample, check_positive
from kernels.reference import EPS_FC, EPS_NORM, EPS_T, fc_lowpass, fc_mask, fc_weight

log = logging.getLogger("rfengine.kernels")
_VALID = ("auto", "reference", "triton")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_logged: set[str] = set()


def backend() -> str:
    """The backend the environment asks for (auto, reference or triton), validated."""
    choice = os.environ.get("RFENGINE_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _VALID:
        raise ValueError(f"RFENGINE_KERNELS: expected one of {', '.join(_VALID)}, got {choice!r}")
    return choice


def _find_triton() -> bool:
    try:
        import triton  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


_TRITON = _find_triton()


def triton_available() -> bool:
    return _TRITON


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """Whether a call on tensors like `x` goes to the fused kernels."""
    choice = backend()
    if choice == "reference":
        chosen = "reference"
    elif choice == "auto":
        chosen = "triton" if x.is_cuda and triton_available() else "reference"
    else:
        if not triton_available():
            raise RuntimeError("RFENGINE_KERNELS=triton: triton is not installed (pip install triton)")
        if not x.is_cuda and not (x.device.type == "cpu" and _interpreting()):
            raise RuntimeError(f"RFENGINE_KERNELS=triton: tensors on {x.device} need CUDA, or CPU tensors with "
                               "TRITON_INTERPRET=1 set before the first import of kernels")
        chosen = "triton"
    if chosen not in _logged:
        _logged.add(chosen)
        log.info("rfengine kernels: using the %s backend", chosen)
    return chosen == "triton"


def _ops():
    from kernels import ops  # imports Triton and registers the custom ops on first use
    return ops


def _fused_ready(name: str, x, like=None) -> None:
    check_image(name, x, like=like)
    if x.dtype not in _FUSED_DTYPES:
        raise ValueError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous()), got strides {x.stride()}")


def _eager_on_cpu(fn):
    """The interpreter cannot run inside a compiled graph: keep interpreted CPU calls eager."""
    disabled = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        first = args[0]
        return (disabled if first.device.type == "cpu" else fn)(*args, **kwargs)
    return call


# ---------------------------------------------------------------------------------------------
# The public ops
# ---------------------------------------------------------------------------------------------

def adr_euler_step(xhat, v, h, *, x0=None, x1=None, t=None):
    """One Euler step of the ADR rollout, fused with the rectified target on the last step.
    See kernels.reference.adr_euler_step for the definition."""
    if not (isinstance(xhat, torch.Tensor) and use_triton(xhat)):
        return reference.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t)
    return _fused_adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t)


@_eager_on_cpu
def _fused_adr_euler_step(xhat, v, h, *, x0=None, x1=None, t=None):
    _fused_ready("xhat", xhat)
    _fused_ready("v", v, like=xhat)
    check_per_sample("h", h, xhat)
    given = [a is not None for a in (x0, x1, t)]
    if not any(given):
        return _ops().adr_step(xhat, v, h.contiguous())
    if not all(given):
        raise ValueError("x0, x1, t: pass all three (the last rollout step) or none")
    _fused_ready("x0", x0, like=xhat)
    _fused_ready("x1", x1, like=xhat)
    check_per_sample("t", t, xhat, unit_interval=True)
    return _ops().adr_step_final(xhat, v, h.contiguous(), x0, x1, t.contiguous())


def fc_weighted_mse(pred, target, delta, *, mask="circle", cutoff=0.25, alpha=1.0, t=None, t_max=1.0,
                    reduction="mean"):
    """The FC-reweighted MSE. See kernels.reference.fc_weighted_mse for the definition."""
    if not (isinstance(pred, torch.Tensor) and use_triton(pred)):
        return reference.fc_weighted_mse(pred, target, delta, mask=mask, cutoff=cutoff, alpha=alpha, t=t,
                                         t_max=t_max, reduction=reduction)
    return _fused_fc_weighted_mse(pred, target, delta, mask=mask, cutoff=cutoff, alpha=alpha, t=t, t_max=t_max,
                                  reduction=reduction)


@_eager_on_cpu
def _fused_fc_weighted_mse(pred, target, delta, *, mask, cutoff, alpha, t, t_max, reduction):
    _fused_ready("pred", pred)
    _fused_ready("target", target, like=pred)
    _fused_ready("delta", delta, like=pred)
    check_choice("mask", mask, reference.MASKS)
    check_positive("cutoff", cutoff)
    check_positive("alpha", alpha, allow_zero=True)
    check_choice("reduction", reduction, reference.REDUCTIONS)
    alpha_b = torch.full((pred.shape[0],), float(alpha), device=pred.device, dtype=torch.float32)
    if t is not None:
        check_per_sample("t", t, pred, unit_interval=True)
        alpha_b = torch.where(t > t_max, torch.zeros_like(alpha_b), alpha_b)
    per_sample = _ops().fc_weighted_mse(pred, target.detach(), delta.detach(), alpha_b, mask, float(cutoff))[0]
    return per_sample.mean() if reduction == "mean" else per_sample


def adr_loss(v_hat, uhat, t, *, kind="x1", reduction="mean"):
    """The ADR loss. See kernels.reference.adr_loss for the definition."""
    if not (isinstance(v_hat, torch.Tensor) and use_triton(v_hat)):
        return reference.adr_loss(v_hat, uhat, t, kind=kind, reduction=reduction)
    return _fused_adr_loss(v_hat, uhat, t, kind=kind, reduction=reduction)


@_eager_on_cpu
def _fused_adr_loss(v_hat, uhat, t, *, kind, reduction):
    _fused_ready("v_hat", v_hat)
    _fused_ready("uhat", uhat, like=v_hat)
    check_per_sample("t", t, v_hat, unit_interval=True)
    check_choice("kind", kind, reference.ADR_KINDS)
    check_choice("reduction", reduction, reference.REDUCTIONS)
    per_sample = _ops().adr_loss(v_hat, uhat.detach(), t.contiguous(), kind)[0]
    return per_sample.mean() if reduction == "mean" else per_sample


__all__ = ["adr_euler_step", "fc_weighted_mse", "adr_loss", "fc_lowpass", "fc_mask", "fc_weight",
           "backend", "use_triton", "triton_available", "EPS_T", "EPS_NORM", "EPS_FC"]
