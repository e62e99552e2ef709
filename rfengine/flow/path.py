"""The linear (SiT "Linear") probability path: t = 0 is noise, t = 1 is data (docs/objectives.md section 1)."""
from __future__ import annotations

import torch


def expand_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample times (B,) -> (B, 1, 1, ...) broadcastable against x (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t*x1 + (1 - t)*x0 for noise x0, data x1 (B, ...) and times t (B,)."""
    tt = expand_t(t, x1)
    return tt * x1 + (1 - tt) * x0


def velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The conditional velocity u = x1 - x0, constant along the straight path."""
    return x1 - x0


def sample_times(n: int, kind: str = "uniform", *, mean: float = 0.0, std: float = 1.0,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times (n,) in [0, 1]: `uniform`, or `logit_normal` (sigmoid of N(mean, std^2))."""
    if kind == "uniform":
        return torch.rand(n, device=device, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, device=device, generator=generator))
    raise ValueError(f"kind: expected 'uniform' or 'logit_normal', got {kind!r}")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift (SD3 form on the noise level sigma = 1 - t): shift > 1 spends more of the
    grid at high noise. shift = 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"shift: expected > 0, got {shift}")
    sigma = 1 - t
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


def unshift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The inverse of `shift_time`: the uniform-grid time that `shift_time(., shift)` maps to t."""
    if shift <= 0:
        raise ValueError(f"shift: expected > 0, got {shift}")
    sigma = 1 - t
    return 1 - sigma / (shift - (shift - 1) * sigma)
