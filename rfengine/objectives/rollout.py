"""The ADR rollout shared by ReflexFlow and scheduled sampling (SPEC section 3, steps 1-3).

For FM times t, pick earlier start times s, take K Euler steps of the current model from the true
state x_s to reach the model's own state xhat at t, and fuse the last step with the rectified
target uhat = (x1 - xhat)/max(1 - t, eps) and the input-space bias delta_x = xhat - x_t.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from rfengine.flow import interpolate


@dataclass
class Rollout:
    """What one rollout produces; every tensor has the batch's leading dimension B."""
    s: torch.Tensor            # (B,) start times (s = t where no rollout)
    rolled: torch.Tensor       # (B,) bool, which samples were rolled out
    xhat: torch.Tensor         # (B, C, H, W) the model's own state at t
    uhat: torch.Tensor         # (B, C, H, W) rectified target
    delta_x: torch.Tensor      # (B, C, H, W) xhat - x_t
    uhat_sqnorm: torch.Tensor  # (B,)


def pair_times(t: torch.Tensor, adr) -> tuple[torch.Tensor, torch.Tensor]:
    """Start times s <= t for the rollout and the mask of rolled samples (`adr.prob`).

    grid:    s = max(t - K/infer_steps, 0), the drift an Euler sampler with infer_steps steps makes;
    uniform: s = t*U(0, 1).
    """
    if adr.pairing == "grid":
        s = torch.clamp(t - adr.steps / adr.infer_steps, min=0.0)
    elif adr.pairing == "uniform":
        s = t * torch.rand_like(t)
    else:
        raise ValueError(f"adr.pairing: expected 'grid' or 'uniform', got {adr.pairing!r}")
    if adr.prob >= 1.0:
        return s, torch.ones_like(t, dtype=torch.bool)
    rolled = torch.rand_like(t) < adr.prob
    return torch.where(rolled, s, t), rolled


def _take(y, idx):
    return None if y is None else y[idx]


def rollout(model, x0: torch.Tensor, x1: torch.Tensor, y, t: torch.Tensor, adr) -> Rollout:
    """K Euler steps of `model` from x_s to t. Runs without gradient, except the last model call when
    `adr.grad_through_rollout` (then xhat, uhat and delta_x carry that call's graph). Only the rolled
    samples are sent through the model; the others keep xhat = x_t exactly (their step is h = 0)."""
    s, rolled = pair_times(t, adr)
    k_steps = adr.steps
    h = (t - s) / k_steps
    x_s = interpolate(x0, x1, s)
    b = t.shape[0]
    idx = rolled.nonzero().squeeze(1)
    subset = idx.numel() < b
    state = x_s[idx] if subset else x_s
    ts, hs, ys = (s[idx], h[idx], _take(y, idx)) if subset else (s, h, y)
    v = None
    for k in range(k_steps):
        last = k == k_steps - 1
        if state.shape[0] > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and last and adr.grad_through_rollout):
                v = model(state, ts + k * hs, ys)
        else:
            v = torch.zeros_like(state)
        if not last:
            state = kernels.adr_euler_step(state, v, hs)
    if subset:  # scatter the rolled samples back into full-batch tensors for the fused last step
        full_state, full_v = x_s.clone(), torch.zeros_like(x_s, dtype=v.dtype)
        full_state[idx] = state.to(full_state.dtype)
        full_v[idx] = v
        state, v = full_state, full_v
    xhat, uhat, delta_x, sq = kernels.adr_euler_step(state, v, h, x0=x0, x1=x1, t=t)
    return Rollout(s=s, rolled=rolled, xhat=xhat, uhat=uhat, delta_x=delta_x, uhat_sqnorm=sq)


def rollout_metrics(r: Rollout, t: torch.Tensor) -> dict:
    """Training-time exposure bias and the time-pair statistics (detached 0-dim tensors)."""
    n = r.rolled.sum().clamp(min=1)
    dx = r.delta_x.detach().float().pow(2).flatten(1).mean(1)                # ||delta_x||^2 / d per sample
    return {
        "delta_x_sq": (dx * r.rolled).sum() / n,
        "t_mean": t.mean(),
        "s_mean": r.s.mean(),
        "gap_mean": ((t - r.s) * r.rolled).sum() / n,
        "rolled_frac": r.rolled.float().mean(),
    }
