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


def assert_agree(fused, ref, exact, name=""):
    """fused, ref: tensors of the same dtype; exact: the float64 evaluation of the same inputs."""
    assert fused.dtype == ref.dtype and fused.shape == ref.shape, name
    assert torch.isfinite(fused).all(), f"{name}: non-finite values (unwritten elements?)"
    f, r, e = fused.double(), ref.double(), exact.double()
    scale = e.abs().max().clamp(min=1e-12)
    if ref.dtype in (torch.float32, torch.float64):
        err = (f - r).abs().max() / scale
        assert err < 1e-5, f"{name}: relative error {err:.3g} against the reference"
    else:
        fused_err = (f - e).abs().max()
        ref_err = (r - e).abs().max()
        atol = 1e-3 * scale
        assert fused_err <= 2 * ref_err + atol, f"{name}: fused error {fused_err:.3g} vs reference {ref_err:.3g}"
