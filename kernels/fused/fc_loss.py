"""fc_weighted_mse, fused: cuFFT low-pass, then one Triton pass for the weight and the reduction.

The FC loss of one sample is, with e = pred - target, lp = the low-passed delta, N = C*H*W,
    L_b = mean(w*e^2),  w = 1 + a_b*|lp|/(S3/N + eps),  so  L_b = (S1 + a_b*S2/(S3/N + eps))/N
with S1 = sum e^2, S2 = sum |lp|*e^2, S3 = sum |lp|. All three sums come out of ONE pass over
(lp, pred, target), so the weight never has to exist in memory; `a_b` is alpha, or 0 where t > t_max.
The backward pass recomputes w elementwise from lp and the per-sample scale, reading lp, pred and
target once more and writing the gradient.

The low-pass itself is a real FFT (rfft2 -> mask on the half spectrum -> irfft2) in the accumulation
dtype: the masks are symmetric under f -> -f, so this equals Re(IFFT2(M*FFT2(delta))) of the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.fused import _common
from kernels.fused._common import Launch, acc_dtype, block_for, cast_for, grid, row_block, tl_acc

_MASKS: dict = {}


def half_mask(h: int, w: int, mask: str, cutoff: float, device, dtype) -> torch.Tensor:
    """The reference's mask restricted to the rfft2 half spectrum (H, W//2 + 1); cached per shape."""
    key = (h, w, mask, float(cutoff), str(device), dtype)
    m = _MASKS.get(key)
    if m is None:
        from kernels.reference import fc_mask
        full = fc_mask(h, w, mask, cutoff, device=device, dtype=dtype)
        m = _MASKS[key] = full[:, : w // 2 + 1].contiguous()
    return m


def lowpass(delta: torch.Tensor, mask: str, cutoff: float, acc: torch.dtype) -> torch.Tensor:
    if mask == "none":  # all-pass: the bias itself, no FFT (a fresh tensor: the kernels read it as lp)
        return delta.to(dtype=acc, memory_format=torch.contiguous_format, copy=True)
    h, w = delta.shape[-2:]
    spec = torch.fft.rfft2(delta.to(acc))
    return torch.fft.irfft2(spec * half_mask(h, w, mask, cutoff, delta.device, acc), s=(h, w))


@triton.jit
def _fc_sums(lp_ptr, pred_ptr, target_ptr, part_ptr, N, NB,
             ACC: tl.constexpr, BLOCK: tl.constexpr):
    b, j, idx, m = row_block(N, BLOCK)
    a = tl.abs(tl.load(lp_ptr + idx, mask=m, other=0.0).to(ACC))
    e = tl.load(pred_ptr + idx, mask=m, other=0.0).to(ACC) - tl.load(target_ptr + idx, mask=m, other=0.0).to(ACC)
    e2 = e * e
    base = part_ptr + (b * NB + j) * 3
    tl.store(base, tl.sum(e2, axis=0))
    tl.store(base + 1, tl.sum(a * e2, axis=0))
    tl.store(base + 2, tl.sum(a, axis=0))


@triton.jit
def _fc_grad(lp_ptr, pred_ptr, target_ptr, scale_ptr, gout_ptr, grad_ptr, N, inv_n,
             ACC: tl.constexpr, BLOCK: tl.constexpr):
    """grad = gout_b * 2*w*(pred - target)/N with w = 1 + scale_b*|lp|."""
    b, _, idx, m = row_block(N, BLOCK)
    a = tl.abs(tl.load(lp_ptr + idx, mask=m, other=0.0).to(ACC))
    e = tl.load(pred_ptr + idx, mask=m, other=0.0).to(ACC) - tl.load(target_ptr + idx, mask=m, other=0.0).to(ACC)
    s = tl.load(scale_ptr + b).to(ACC)
    g = tl.load(gout_ptr + b).to(ACC)
    w = 1.0 + s * a
    tl.store(grad_ptr + idx, cast_for(g * 2.0 * inv_n * w * e, grad_ptr), mask=m)


def fc_fwd(pred, target, delta, alpha_b, mask: str, cutoff: float, eps_fc: float = 1e-8):
    """Per-sample losses (B,) and what the backward needs: (loss_b, lp, scale_b) with
    scale_b = alpha_b / (mean|lp| + eps), so that w = 1 + scale_b*|lp|."""
    b = pred.shape[0]
    n = pred[0].numel()
    acc = acc_dtype(pred, target, delta)
    lp = lowpass(delta, mask, cutoff, acc)
    block = block_for(pred, n)
    g = grid(b, n, block)
    part = _common.empty((b, g[1], 3), pred, acc)
    _fc_sums[g](lp, pred, target, part, n, g[1], ACC=tl_acc(acc), BLOCK=block)
    s1, s2, s3 = part.sum(1).unbind(1)
    scale = alpha_b.to(acc) / (s3 / n + eps_fc)
    return (s1 + scale * s2) / n, lp, scale


def fc_bwd(grad_b, pred, target, lp, scale):
    """dL_b/dpred scaled by the incoming per-sample gradient grad_b (B,)."""
    b = pred.shape[0]
    n = pred[0].numel()
    acc = acc_dtype(pred, target, lp)
    block = block_for(pred, n)
    grad = _common.empty_like(pred)
    _fc_grad[grid(b, n, block)](lp, pred, target, scale, grad_b.contiguous(), grad, n, 1.0 / n,
                                ACC=tl_acc(acc), BLOCK=block)
    return grad


# For the ahead-of-time checks (kernels/fused/aot.py). The low-passed bias `lp` is in the accumulation
# dtype (fp32): it comes out of the fp32 FFT.
LAUNCHES = [
    Launch(_fc_sums, data=("pred_ptr", "target_ptr"), fp32=("lp_ptr", "part_ptr"), ints=("N", "NB"),
           needs={"-": (("pred", "target"), ())}),
    Launch(_fc_grad, data=("pred_ptr", "target_ptr", "grad_ptr"), fp32=("lp_ptr", "scale_ptr", "gout_ptr"),
           ints=("N",), floats=("inv_n",), needs={"-": (("pred", "target"), ("grad",))}),
]
