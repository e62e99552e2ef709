"""Input factories shared by the kernel tests and the benchmarks."""
from __future__ import annotations

import torch

SHAPES = [(3, 4, 17, 23), (2, 1, 32, 32), (4, 4, 16, 16), (2, 3, 9, 8), (1, 2, 5, 5)]


def adr_step_inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    """xhat, v, h, x0, x1, t for adr_euler_step; t in [0, 1) with one sample at t = 1 to hit the eps floor."""
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    mk = lambda: torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = torch.rand(b, generator=g, dtype=torch.float64)
    t[-1] = 1.0
    h = torch.rand(b, generator=g, dtype=torch.float64) * 0.2
    return mk(), mk(), h.to(device, dtype), mk(), mk(), t.to(device, dtype)


def fc_inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    """pred, target, delta, t for fc_weighted_mse; delta has a strong low-frequency part."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda: torch.randn(shape, generator=g, dtype=torch.float64)
    b, c, hh, ww = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, hh, dtype=torch.float64), torch.linspace(0, 1, ww, dtype=torch.float64),
                            indexing="ij")
    smooth = torch.sin(2 * torch.pi * (yy + 0.5 * xx))
    delta = 0.3 * mk() + smooth.expand(shape) * torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64)
    t = torch.rand(b, generator=g, dtype=torch.float64)
    conv = lambda x: x.to(device=device, dtype=dtype)
    return conv(mk()), conv(mk()), conv(delta), conv(t)


def adr_loss_inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda: torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return mk(), mk(), t
