"""Reference implementations of rfengine's custom ops (docs/objectives.md section 5): the definitions that every
fused kernel is held to. Plain PyTorch, written for obviousness rather than speed; everything is
accumulated in fp32 (fp64 stays fp64) whatever the input dtype.

Conventions: t = 0 is noise, t = 1 is data; x_t = t*x1 + (1 - t)*x0.
"""
from __future__ import annotations

import torch

from kernels._checks import check_choice, check_image, check_per_sample, check_positive

EPS_T = 1e-3      # floor for 1 - t
EPS_NORM = 1e-6   # floor for vector norms
EPS_FC = 1e-8     # floor in the FC weight's denominator

MASKS = ("circle", "box", "gaussian", "none")
ADR_KINDS = ("x1", "mse", "direction")
REDUCTIONS = ("mean", "none")


def _acc(x: torch.Tensor) -> torch.Tensor:
    """The accumulation dtype: fp32, or fp64 for fp64 inputs (for gradcheck)."""
    return x.double() if x.dtype == torch.float64 else x.float()


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample


# ---------------------------------------------------------------------------------------------
# ADR: Euler step fused with the rectified target
# ---------------------------------------------------------------------------------------------

def adr_euler_step(xhat, v, h, *, x0=None, x1=None, t=None):
    """One Euler step `xhat + h*v` of the ADR rollout; on the last step also the rectified target.

    xhat, v: (B, C, H, W) floating; h: (B,) step sizes. Returns xhat_next in xhat's dtype.
    With x0 (noise), x1 (data) and t (B,) in [0, 1] all given, returns the tuple
    (xhat_next, uhat, delta_x, uhat_sqnorm):
      uhat = (x1 - xhat_next)/max(1 - t, EPS_T)   the velocity that carries xhat_next to x1,
      delta_x = xhat_next - x_t                   the input-space exposure bias,
      uhat_sqnorm = sum over C, H, W of uhat^2    shape (B,), in the accumulation dtype.
    uhat and delta_x are computed from xhat_next as stored (rounded to xhat's dtype), the state the
    model sees, and returned in xhat's dtype.
    """
    check_image("xhat", xhat)
    check_image("v", v, like=xhat)
    check_per_sample("h", h, xhat)
    xn = (_acc(xhat) + _per_sample(_acc(h), xhat) * _acc(v)).to(xhat.dtype)
    given = [a is not None for a in (x0, x1, t)]
    if not any(given):
        return xn
    if not all(given):
        raise ValueError("x0, x1, t: pass all three (the last rollout step) or none")
    check_image("x0", x0, like=xhat)
    check_image("x1", x1, like=xhat)
    check_per_sample("t", t, xhat, unit_interval=True)
    tt = _per_sample(_acc(t), xhat)
    x1a, xna = _acc(x1), _acc(xn)
    x_t = tt * x1a + (1 - tt) * _acc(x0)
    uhat = (x1a - xna) / torch.clamp(1 - tt, min=EPS_T)
    delta_x = xna - x_t
    return xn, uhat.to(xhat.dtype), delta_x.to(xhat.dtype), uhat.pow(2).flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------
# FC: low-pass of the exposure bias and the reweighted MSE
# ---------------------------------------------------------------------------------------------

def fc_mask(height: int, width: int, mask: str = "circle", cutoff: float = 0.25, *,
            device=None, dtype=torch.float32) -> torch.Tensor:
    """The low-pass mask (H, W) on the unshifted 2-D frequency grid of `torch.fft.fftfreq`
    (cycles/sample). circle: radius <= cutoff/2; box: |fy|, |fx| <= cutoff/2; gaussian: sigma = cutoff/2;
    none: all-pass (every entry 1; the ablation of the low-pass, docs/objectives.md section 4.2)."""
    check_choice("mask", mask, MASKS)
    check_positive("cutoff", cutoff)
    fy = torch.fft.fftfreq(height, device=device, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, device=device, dtype=torch.float64)[None, :]
    r = 0.5 * cutoff
    if mask == "circle":
        m = (fy ** 2 + fx ** 2).sqrt() <= r
    elif mask == "none":
        m = torch.ones_like(fy * fx, dtype=torch.bool)
    elif mask == "box":
        m = (fy.abs() <= r) & (fx.abs() <= r)
    else:
        m = torch.exp(-(fy ** 2 + fx ** 2) / (2 * r * r))
    return m.to(dtype)


def fc_lowpass(delta, mask: str = "circle", cutoff: float = 0.25) -> torch.Tensor:
    """delta_lp = Re(IFFT2(M * FFT2(delta))) per (sample, channel) over (H, W), in the accumulation dtype.
    With mask `none` (all-pass) that is delta itself, and no FFT is taken."""
    check_image("delta", delta)
    d = _acc(delta)
    if mask == "none":
        check_positive("cutoff", cutoff)
        return d.clone() if d is delta else d
    m = fc_mask(d.shape[-2], d.shape[-1], mask, cutoff, device=d.device, dtype=d.dtype)
    return torch.fft.ifft2(torch.fft.fft2(d) * m).real


def fc_weight(delta, *, mask="circle", cutoff=0.25, alpha=1.0, t=None, t_max=1.0) -> torch.Tensor:
    """The FC weight w = 1 + alpha*|delta_lp| / (mean_{C,H,W}|delta_lp| + EPS_FC), (B, C, H, W),
    detached; w = 1 for samples with t > t_max."""
    check_positive("alpha", alpha, allow_zero=True)
    with torch.no_grad():
        lp = fc_lowpass(delta, mask, cutoff).abs()
        w = 1 + alpha * lp / (lp.flatten(1).mean(1).reshape(-1, 1, 1, 1) + EPS_FC)
        if t is not None:
            check_per_sample("t", t, delta, unit_interval=True)
            w = torch.where(_per_sample(t > t_max, w), torch.ones_like(w), w)
    return w


def fc_weighted_mse(pred, target, delta, *, mask="circle", cutoff=0.25, alpha=1.0, t=None, t_max=1.0,
                    reduction="mean"):
    """L_FC = mean(w * (pred - target)^2) with the FC weight of `delta` (docs/objectives.md section 3, steps 6-7).

    pred, target, delta: (B, C, H, W) floating. Differentiable in `pred` only. Returns a scalar
    (`mean`) or per-sample means over C, H, W (`none`, shape (B,)), in the accumulation dtype.
    With alpha = 0 this is the plain MSE.
    """
    check_image("pred", pred)
    check_image("target", target, like=pred)
    check_image("delta", delta, like=pred)
    check_choice("reduction", reduction, REDUCTIONS)
    w = fc_weight(delta, mask=mask, cutoff=cutoff, alpha=alpha, t=t, t_max=t_max)
    err = (_acc(pred) - _acc(target).detach()).pow(2)
    return _reduce((w.to(err.dtype) * err).flatten(1).mean(1), reduction)


# ---------------------------------------------------------------------------------------------
# ADR loss
# ---------------------------------------------------------------------------------------------

def adr_loss(v_hat, uhat, t, *, kind="x1", reduction="mean"):
    """The ADR loss of the prediction `v_hat` from the drifted state against the rectified target
    `uhat` (docs/objectives.md section 3, step 5). v_hat, uhat: (B, C, H, W); t: (B,) in [0, 1].
      x1:        mean_{CHW} w_t^2 (v_hat - uhat)^2, w_t = max(1 - t, EPS_T)
      mse:       mean_{CHW} (v_hat - uhat)^2
      direction: || v_hat/max(||v_hat||, EPS_NORM) - uhat/max(||uhat||, EPS_NORM) ||^2 (norms per sample)
    Differentiable in `v_hat` only. Returns a scalar (`mean`) or per-sample values (`none`, (B,)).
    """
    check_image("v_hat", v_hat)
    check_image("uhat", uhat, like=v_hat)
    check_per_sample("t", t, v_hat, unit_interval=True)
    check_choice("kind", kind, ADR_KINDS)
    check_choice("reduction", reduction, REDUCTIONS)
    v, u = _acc(v_hat).flatten(1), _acc(uhat).detach().flatten(1)
    if kind == "direction":
        vn = v / v.norm(dim=1, keepdim=True).clamp(min=EPS_NORM)
        un = u / u.norm(dim=1, keepdim=True).clamp(min=EPS_NORM)
        per = (vn - un).pow(2).sum(1)
    else:
        per = (v - u).pow(2).mean(1)
        if kind == "x1":
            per = per * torch.clamp(1 - _acc(t), min=EPS_T).pow(2)
    return _reduce(per, reduction)
