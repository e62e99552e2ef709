"""ODE samplers for the velocity field: Euler and Heun on a (shifted) uniform grid, with
classifier-free guidance. Sampling integrates forward in t from noise (t = 0) to data (t = 1)."""
from __future__ import annotations

from typing import Callable

import torch

from rfengine.flow.path import shift_time

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def time_grid(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """steps + 1 times from 0 to 1 (uniform, then shifted)."""
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    return shift_time(torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=torch.float64), shift)


def with_cfg(fn: VelocityFn, scale: float, null_class: int) -> VelocityFn:
    """Classifier-free guidance: v = v_null + scale*(v_cond - v_null), both in one batched call.
    scale = 1 returns `fn` unchanged (no extra compute)."""
    if scale == 1.0:
        return fn

    def guided(x, t, y):
        if y is None:
            raise ValueError("y: classifier-free guidance needs class labels, got None")
        v = fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
        v_cond, v_null = v.chunk(2)
        return v_null + scale * (v_cond - v_null)
    return guided


@torch.no_grad()
def integrate(fn: VelocityFn, x: torch.Tensor, y: torch.Tensor | None, *, steps: int,
              method: str = "euler", shift: float = 1.0, return_path: bool = False):
    """Integrate dx/dt = fn(x, t, y) from t = 0 to 1. x: (B, ...) noise. Returns x at t = 1, or
    with `return_path` the list of the steps + 1 states on the grid."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method: expected 'euler' or 'heun', got {method!r}")
    grid = time_grid(steps, shift, device=x.device)
    path = [x]
    b = x.shape[0]
    for i in range(steps):
        t0, t1 = grid[i], grid[i + 1]
        h = (t1 - t0).to(x.dtype)
        v0 = fn(x, t0.to(x.dtype).expand(b), y).to(x.dtype)
        if method == "euler":
            x = x + h * v0
        else:
            x_pred = x + h * v0
            v1 = fn(x_pred, t1.to(x.dtype).expand(b), y).to(x.dtype)
            x = x + h * 0.5 * (v0 + v1)
        if return_path:
            path.append(x)
    return path if return_path else x
