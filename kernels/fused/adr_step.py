"""adr_euler_step, fused: the Euler update of the ADR rollout and, on its last step, the rectified
target, the exposure bias and the per-sample ||uhat||^2, in one pass over memory.

Forward reads xhat, v (and x0, x1 on the last step) once and writes xhat_next (and uhat, delta_x);
the per-sample sums are written as per-block partials and summed in a fixed order (deterministic).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kernels.fused import _common
from kernels.fused._common import Launch, acc_dtype, block_for, cast_for, grid, row_block, tl_acc


@triton.jit
def _adr_step_fwd(xhat_ptr, v_ptr, h_ptr, x0_ptr, x1_ptr, t_ptr,
                  xn_ptr, uhat_ptr, dx_ptr, part_ptr,
                  N, NB, eps_t,
                  FINAL: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b, j, idx, m = row_block(N, BLOCK)
    xhat = tl.load(xhat_ptr + idx, mask=m, other=0.0).to(ACC)
    v = tl.load(v_ptr + idx, mask=m, other=0.0).to(ACC)
    h = tl.load(h_ptr + b).to(ACC)
    xn = cast_for(xhat + h * v, xn_ptr)
    tl.store(xn_ptr + idx, xn, mask=m)
    if FINAL:
        t = tl.load(t_ptr + b).to(ACC)
        x0 = tl.load(x0_ptr + idx, mask=m, other=0.0).to(ACC)
        x1 = tl.load(x1_ptr + idx, mask=m, other=0.0).to(ACC)
        xr = xn.to(ACC)  # the state as stored, as the model will see it
        w = tl.maximum(1.0 - t, eps_t)
        uhat = (x1 - xr) / w
        x_t = t * x1 + (1.0 - t) * x0
        tl.store(uhat_ptr + idx, cast_for(uhat, uhat_ptr), mask=m)
        tl.store(dx_ptr + idx, cast_for(xr - x_t, dx_ptr), mask=m)
        tl.store(part_ptr + b * NB + j, tl.sum(tl.where(m, uhat * uhat, 0.0), axis=0))


@triton.jit
def _adr_step_bwd(g_xn_ptr, g_u_ptr, g_dx_ptr, g_sq_ptr, v_ptr, h_ptr, xn_ptr, x1_ptr, t_ptr,
                  d_xhat_ptr, d_v_ptr, d_x0_ptr, d_x1_ptr,
                  N, eps_t,
                  FINAL: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b, _, idx, m = row_block(N, BLOCK)
    d = tl.load(g_xn_ptr + idx, mask=m, other=0.0).to(ACC)
    h = tl.load(h_ptr + b).to(ACC)
    if FINAL:
        t = tl.load(t_ptr + b).to(ACC)
        w = tl.maximum(1.0 - t, eps_t)
        g_u = tl.load(g_u_ptr + idx, mask=m, other=0.0).to(ACC)
        g_dx = tl.load(g_dx_ptr + idx, mask=m, other=0.0).to(ACC)
        g_sq = tl.load(g_sq_ptr + b).to(ACC)
        x1 = tl.load(x1_ptr + idx, mask=m, other=0.0).to(ACC)
        xr = tl.load(xn_ptr + idx, mask=m, other=0.0).to(ACC)
        uhat = (x1 - xr) / w
        g_uhat_total = g_u + 2.0 * g_sq * uhat  # d/duhat of the outputs uhat and sum(uhat^2)
        d = d - g_uhat_total / w + g_dx        # uhat = (x1 - xn)/w, delta_x = xn - x_t
        tl.store(d_x1_ptr + idx, cast_for(g_uhat_total / w - t * g_dx, d_x1_ptr), mask=m)
        tl.store(d_x0_ptr + idx, cast_for(-(1.0 - t) * g_dx, d_x0_ptr), mask=m)
    tl.store(d_xhat_ptr + idx, cast_for(d, d_xhat_ptr), mask=m)
    tl.store(d_v_ptr + idx, cast_for(h * d, d_v_ptr), mask=m)


def adr_step_fwd(xhat, v, h, x0=None, x1=None, t=None, eps_t: float = 1e-3):
    """Returns xhat_next, or (xhat_next, uhat, delta_x, uhat_sqnorm) when x0, x1, t are given."""
    b = xhat.shape[0]
    n = xhat[0].numel()
    final = x0 is not None
    acc = acc_dtype(xhat, v, *((x0, x1) if final else ()))
    block = block_for(xhat, n)
    g = grid(b, n, block)
    xn = _common.empty_like(xhat)
    if final:
        uhat, dx = _common.empty_like(xhat), _common.empty_like(xhat)
        part = _common.empty((b, g[1]), xhat, acc)
    else:
        x0 = x1 = t = uhat = dx = part = xhat  # unused pointers (FINAL=False never touches them)
    _adr_step_fwd[g](xhat, v, h, x0, x1, t, xn, uhat, dx, part, n, g[1], eps_t,
                     FINAL=final, ACC=tl_acc(acc), BLOCK=block)
    if not final:
        return xn
    return xn, uhat, dx, part.sum(1)


def adr_step_bwd(g_xn, v, h, *, final: bool, g_uhat=None, g_dx=None, g_sq=None, xn=None, x1=None, t=None,
                 x0_like=None, eps_t: float = 1e-3):
    """Gradients for (xhat, v[, x0, x1]) from the output gradients; h and t get none (they are times)."""
    b = g_xn.shape[0]
    n = g_xn[0].numel()
    block = block_for(g_xn, n)
    acc = acc_dtype(g_xn, v)
    d_xhat, d_v = _common.empty_like(g_xn), _common.empty_like(v)
    if final:
        d_x0, d_x1 = _common.empty_like(x0_like), _common.empty_like(x1)
    else:
        g_uhat = g_dx = g_sq = xn = x1 = t = d_x0 = d_x1 = g_xn
    _adr_step_bwd[grid(b, n, block)](g_xn, g_uhat, g_dx, g_sq, v, h, xn, x1, t, d_xhat, d_v, d_x0, d_x1,
                                     n, eps_t, FINAL=final, ACC=tl_acc(acc), BLOCK=block)
    return (d_xhat, d_v, d_x0, d_x1) if final else (d_xhat, d_v)


# What the dispatch launches, for the ahead-of-time checks (kernels/fused/aot.py): the roles of every
# argument, the constexpr variants, and the op's minimum traffic per element (reads, writes).
LAUNCHES = [
    Launch(_adr_step_fwd, data=("xhat_ptr", "v_ptr", "x0_ptr", "x1_ptr", "xn_ptr", "uhat_ptr", "dx_ptr"),
           fp32=("h_ptr", "t_ptr", "part_ptr"), ints=("N", "NB"), floats=("eps_t",),
           variants=({"FINAL": False}, {"FINAL": True}),
           needs={"FINAL=0": (("xhat", "v"), ("xn",)), "FINAL=1": (("xhat", "v", "x0", "x1"), ("xn", "uhat", "dx"))}),
    Launch(_adr_step_bwd, data=("g_xn_ptr", "g_u_ptr", "g_dx_ptr", "v_ptr", "xn_ptr", "x1_ptr", "d_xhat_ptr",
                                "d_v_ptr", "d_x0_ptr", "d_x1_ptr"),
           fp32=("g_sq_ptr", "h_ptr", "t_ptr"), ints=("N",), floats=("eps_t",),
           variants=({"FINAL": False}, {"FINAL": True}),
           needs={"FINAL=0": (("g_xn",), ("d_xhat", "d_v")),
                  "FINAL=1": (("g_xn", "g_u", "g_dx", "xn", "x1"), ("d_xhat", "d_v", "d_x0", "d_x1"))}),
]
