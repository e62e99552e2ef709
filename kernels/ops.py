"""The fused ops as torch.library custom ops: opaque to torch.compile (which traces through their fake
implementations instead of into Triton), with autograd formulas that call fused backward ops.

Schemas (all under the `rfengine` namespace):
  adr_step(xhat, v, h) -> xhat_next
  adr_step_final(xhat, v, h, x0, x1, t) -> (xhat_next, uhat, delta_x, uhat_sqnorm)
  fc_weighted_mse(pred, target, delta, alpha_b, mask, cutoff) -> (loss_b, lp, scale_b)
  adr_loss(v_hat, uhat, t, kind) -> (loss_b, a, c, k)
and one `*_bwd` op each. Extra outputs (lp, scale_b, a, c, k) are what the backward needs; the
public functions in kernels/__init__.py return only the documented values. Inputs are checked by
the caller (kernels/__init__.py): contiguous, same device and shape, floating.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.fused import adr_loss as _adr_loss
from kernels.fused import adr_step as _adr_step
from kernels.fused import fc_loss as _fc_loss
from kernels.fused._common import acc_dtype
from kernels.reference import EPS_FC, EPS_NORM, EPS_T

lib = "rfengine"


def _per_sample(x: Tensor, dtype) -> Tensor:
    return x.new_empty((x.shape[0],), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# adr_step
# ---------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{lib}::adr_step", mutates_args=())
def adr_step(xhat: Tensor, v: Tensor, h: Tensor) -> Tensor:
    return _adr_step.adr_step_fwd(xhat, v, h, eps_t=EPS_T)


@adr_step.register_fake
def _(xhat, v, h):
    return torch.empty_like(xhat)


@torch.library.custom_op(f"{lib}::adr_step_bwd", mutates_args=())
def adr_step_bwd(grad: Tensor, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return _adr_step.adr_step_bwd(grad.contiguous(), v, h, final=False, eps_t=EPS_T)


@adr_step_bwd.register_fake
def _(grad, v, h):
    return torch.empty_like(grad), torch.empty_like(v)


def _adr_step_setup(ctx, inputs, output):
    _, v, h = inputs
    ctx.save_for_backward(v, h)


def _adr_step_backward(ctx, grad):
    v, h = ctx.saved_tensors
    d_xhat, d_v = adr_step_bwd(grad, v, h)
    return d_xhat, d_v, None


adr_step.register_autograd(_adr_step_backward, setup_context=_adr_step_setup)


@torch.library.custom_op(f"{lib}::adr_step_final", mutates_args=())
def adr_step_final(xhat: Tensor, v: Tensor, h: Tensor, x0: Tensor, x1: Tensor, t: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _adr_step.adr_step_fwd(xhat, v, h, x0, x1, t, eps_t=EPS_T)


@adr_step_final.register_fake
def _(xhat, v, h, x0, x1, t):
    return (torch.empty_like(xhat), torch.empty_like(xhat), torch.empty_like(xhat),
            _per_sample(xhat, acc_dtype(xhat, v, x0, x1)))


@torch.library.custom_op(f"{lib}::adr_step_final_bwd", mutates_args=())
def adr_step_final_bwd(g_xn: Tensor, g_uhat: Tensor, g_dx: Tensor, g_sq: Tensor, v: Tensor, h: Tensor,
                       xn: Tensor, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _adr_step.adr_step_bwd(g_xn.contiguous(), v, h, final=True, g_uhat=g_uhat.contiguous(),
                                  g_dx=g_dx.contiguous(), g_sq=g_sq.contiguous(), xn=xn, x1=x1, t=t,
                                  x0_like=x0, eps_t=EPS_T)


@adr_step_final_bwd.register_fake
def _(g_xn, g_uhat, g_dx, g_sq, v, h, xn, x0, x1, t):
    return torch.empty_like(g_xn), torch.empty_like(v), torch.empty_like(x0), torch.empty_like(x1)


def _adr_final_setup(ctx, inputs, output):
    _, v, h, x0, x1, t = inputs
    ctx.save_for_backward(v, h, output[0], x0, x1, t)


def _adr_final_backward(ctx, g_xn, g_uhat, g_dx, g_sq):
    v, h, xn, x0, x1, t = ctx.saved_tensors
    z = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
    d = adr_step_final_bwd(z(g_xn, xn), z(g_uhat, xn), z(g_dx, xn), z(g_sq, t), v, h, xn, x0, x1, t)
    return d[0], d[1], None, d[2], d[3], None


adr_step_final.register_autograd(_adr_final_backward, setup_context=_adr_final_setup)


# ---------------------------------------------------------------------------------------------
# fc_weighted_mse
# ---------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{lib}::fc_weighted_mse", mutates_args=())
def fc_weighted_mse(pred: Tensor, target: Tensor, delta: Tensor, alpha_b: Tensor, mask: str, cutoff: float
                    ) -> tuple[Tensor, Tensor, Tensor]:
    return _fc_loss.fc_fwd(pred, target, delta, alpha_b, mask, cutoff, eps_fc=EPS_FC)


@fc_weighted_mse.register_fake
def _(pred, target, delta, alpha_b, mask, cutoff):
    acc = acc_dtype(pred, target, delta)
    return _per_sample(pred, acc), torch.empty_like(delta, dtype=acc), _per_sample(pred, acc)


@torch.library.custom_op(f"{lib}::fc_weighted_mse_bwd", mutates_args=())
def fc_weighted_mse_bwd(grad_b: Tensor, pred: Tensor, target: Tensor, lp: Tensor, scale: Tensor) -> Tensor:
    return _fc_loss.fc_bwd(grad_b, pred, target, lp, scale)


@fc_weighted_mse_bwd.register_fake
def _(grad_b, pred, target, lp, scale):
    return torch.empty_like(pred)


def _fc_setup(ctx, inputs, output):
    pred, target = inputs[0], inputs[1]
    _, lp, scale = output
    ctx.save_for_backward(pred, target, lp, scale)


def _fc_backward(ctx, grad_b, _g_lp, _g_scale):
    pred, target, lp, scale = ctx.saved_tensors
    return fc_weighted_mse_bwd(grad_b, pred, target, lp, scale), None, None, None, None, None


fc_weighted_mse.register_autograd(_fc_backward, setup_context=_fc_setup)


# ---------------------------------------------------------------------------------------------
# adr_loss
# ---------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{lib}::adr_loss", mutates_args=())
def adr_loss(v_hat: Tensor, uhat: Tensor, t: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    loss, state = _adr_loss.adr_loss_fwd(v_hat, uhat, t, kind, eps_t=EPS_T, eps_norm=EPS_NORM)
    if kind == "direction":
        return loss, state["a"], state["c"], state["k"]
    return loss, torch.zeros_like(loss), state["c"], torch.zeros_like(loss)


@adr_loss.register_fake
def _(v_hat, uhat, t, kind):
    acc = acc_dtype(v_hat, uhat)
    return tuple(_per_sample(v_hat, acc) for _ in range(4))


@torch.library.custom_op(f"{lib}::adr_loss_bwd", mutates_args=())
def adr_loss_bwd(grad_b: Tensor, v_hat: Tensor, uhat: Tensor, a: Tensor, c: Tensor, k: Tensor, kind: str) -> Tensor:
    return _adr_loss.adr_loss_bwd(grad_b, v_hat, uhat, kind, {"a": a, "c": c, "k": k})


@adr_loss_bwd.register_fake
def _(grad_b, v_hat, uhat, a, c, k, kind):
    return torch.empty_like(v_hat)


def _adr_loss_setup(ctx, inputs, output):
    v_hat, uhat, _, kind = inputs
    ctx.kind = kind
    ctx.save_for_backward(v_hat, uhat, *output[1:])


def _adr_loss_backward(ctx, grad_b, *_):
    v_hat, uhat, a, c, k = ctx.saved_tensors
    return adr_loss_bwd(grad_b, v_hat, uhat, a, c, k, ctx.kind), None, None, None


adr_loss.register_autograd(_adr_loss_backward, setup_context=_adr_loss_setup)
