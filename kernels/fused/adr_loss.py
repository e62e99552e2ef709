"""adr_loss, fused: per-sample reductions of the three ADR loss kinds, and their gradient.

x1 / mse: one pass for S = sum (v - u)^2; L_b = c_b*S/N with c_b = max(1 - t, eps_t)^2 (x1) or 1.
direction: one pass for the norms (|v|^2, |u|^2), a second for sum (v/a - u/c)^2 with a, c the
clamped norms, which avoids the cancellation of expanding the square. Its gradient needs the dot
product k_b = (v/a) . (v/a - u/c), also from that second pass.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.fused import _common
from kernels.fused._common import Launch, acc_dtype, block_for, cast_for, grid, row_block, tl_acc

KINDS = {"x1": 0, "mse": 1, "direction": 2}


@triton.jit
def _sums(v_ptr, u_ptr, sa_ptr, sc_ptr, part_ptr, N, NB,
          PASS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """PASS 0: sum (v-u)^2.  PASS 1: sum v^2, sum u^2.  PASS 2: sum r^2, sum (v/a)*r, r = v/a - u/c."""
    b, j, idx, m = row_block(N, BLOCK)
    v = tl.load(v_ptr + idx, mask=m, other=0.0).to(ACC)
    u = tl.load(u_ptr + idx, mask=m, other=0.0).to(ACC)
    base = part_ptr + (b * NB + j) * 2
    if PASS == 0:
        d = v - u
        tl.store(base, tl.sum(d * d, axis=0))
        tl.store(base + 1, tl.sum(d * 0.0, axis=0))
    elif PASS == 1:
        tl.store(base, tl.sum(v * v, axis=0))
        tl.store(base + 1, tl.sum(u * u, axis=0))
    else:
        a = tl.load(sa_ptr + b).to(ACC)
        c = tl.load(sc_ptr + b).to(ACC)
        vn = v / a
        r = vn - u / c
        tl.store(base, tl.sum(r * r, axis=0))
        tl.store(base + 1, tl.sum(vn * r, axis=0))


@triton.jit
def _grad(v_ptr, u_ptr, coef_ptr, sa_ptr, sc_ptr, k_ptr, grad_ptr, N,
          DIRECTION: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """mse/x1: grad = coef_b*(v - u) (coef_b = g_b*2*c_b/N).
    direction: grad = coef_b*(r - k_b*v/a) (coef_b = g_b*2/a, k_b = 0 where |v| <= eps)."""
    b, _, idx, m = row_block(N, BLOCK)
    v = tl.load(v_ptr + idx, mask=m, other=0.0).to(ACC)
    u = tl.load(u_ptr + idx, mask=m, other=0.0).to(ACC)
    coef = tl.load(coef_ptr + b).to(ACC)
    if DIRECTION:
        a = tl.load(sa_ptr + b).to(ACC)
        c = tl.load(sc_ptr + b).to(ACC)
        k = tl.load(k_ptr + b).to(ACC)
        vn = v / a
        g = coef * ((vn - u / c) - k * vn)
    else:
        g = coef * (v - u)
    tl.store(grad_ptr + idx, cast_for(g, grad_ptr), mask=m)


def _launch_sums(v, u, pass_, sa=None, sc=None):
    b, n = v.shape[0], v[0].numel()
    acc = acc_dtype(v, u)
    block = block_for(v, n)
    g = grid(b, n, block)
    part = _common.empty((b, g[1], 2), v, acc)
    sa = v if sa is None else sa
    sc = v if sc is None else sc
    _sums[g](v, u, sa, sc, part, n, g[1], PASS=pass_, ACC=tl_acc(acc), BLOCK=block)
    return part.sum(1).unbind(1)


def adr_loss_fwd(v, u, t, kind: str, eps_t: float = 1e-3, eps_norm: float = 1e-6):
    """Per-sample losses (B,) and the per-sample state the backward needs (a dict of (B,) tensors)."""
    n = v[0].numel()
    acc = acc_dtype(v, u)
    if kind == "direction":
        svv, suu = _launch_sums(v, u, 1)
        a = svv.sqrt().clamp(min=eps_norm)
        c = suu.sqrt().clamp(min=eps_norm)
        loss, k = _launch_sums(v, u, 2, a, c)
        k = torch.where(svv.sqrt() > eps_norm, k, torch.zeros_like(k))  # a is constant below eps
        return loss, {"a": a, "c": c, "k": k}
    s, _ = _launch_sums(v, u, 0)
    c = torch.clamp(1 - t.to(acc), min=eps_t) ** 2 if kind == "x1" else torch.ones_like(s)
    return c * s / n, {"c": c}


def adr_loss_bwd(grad_b, v, u, kind: str, state: dict):
    b, n = v.shape[0], v[0].numel()
    acc = acc_dtype(v, u)
    block = block_for(v, n)
    grad = _common.empty_like(v)
    g = grad_b.to(acc)
    if kind == "direction":
        coef = (g * 2 / state["a"]).contiguous()
        _grad[grid(b, n, block)](v, u, coef, state["a"], state["c"], state["k"], grad, n,
                                 DIRECTION=True, ACC=tl_acc(acc), BLOCK=block)
    else:
        coef = (g * 2 * state["c"] / n).contiguous()
        _grad[grid(b, n, block)](v, u, coef, coef, coef, coef, grad, n,
                                 DIRECTION=False, ACC=tl_acc(acc), BLOCK=block)
    return grad


# For the ahead-of-time checks (kernels/fused/aot.py): PASS 0 (x1, mse), PASS 1 and 2 (direction).
LAUNCHES = [
    Launch(_sums, data=("v_ptr", "u_ptr"), fp32=("sa_ptr", "sc_ptr", "part_ptr"), ints=("N", "NB"),
           variants=({"PASS": 0}, {"PASS": 1}, {"PASS": 2}),
           needs={f"PASS={p}": (("v", "u"), ()) for p in range(3)}),
    Launch(_grad, data=("v_ptr", "u_ptr", "grad_ptr"), fp32=("coef_ptr", "sa_ptr", "sc_ptr", "k_ptr"), ints=("N",),
           variants=({"DIRECTION": False}, {"DIRECTION": True}),
           needs={f"DIRECTION={d}": (("v", "u"), ("grad",)) for d in range(2)}),
]
