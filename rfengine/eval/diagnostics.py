"""Exposure-bias diagnostics at inference (docs/objectives.md section 2).

Trajectories start on a short true trajectory: noise x0 paired with a data sample x1, the true state
x_{t_1} = t_1*x1 + (1 - t_1)*x0 at the first grid time, then the Euler sampler runs the model from
there. At every grid time t_k the model's state xhat_tk is compared with the true x_tk:
  paired error   ||xhat_tk - x_tk||^2 / d
  energy gap     (E||xhat_tk||^2 - E||x_tk||^2) / d    (a lower paired error can come from blur;
                                                        the gap shows it: blur has negative energy)
and the radially averaged power spectrum of delta = xhat_tk - x_tk at chosen steps.
"""
from __future__ import annotations

import numpy as np
import torch

from rfengine.flow import interpolate, time_grid


@torch.no_grad()
def exposure_bias(model, x0: torch.Tensor, x1: torch.Tensor, y, steps: int, spectra_at=(0.25, 0.75)) -> dict:
    """Per-step paired error and energy gap along Euler trajectories of `steps` steps, and the
    radial power spectrum of the bias at the steps nearest the fractions `spectra_at` of the path."""
    ts = time_grid(steps, device=x0.device).float()       # t_0 = 0 < ... < t_steps = 1
    d = x0[0].numel()
    x = interpolate(x0, x1, ts[1].expand(x0.shape[0]))  # one true step: the pairing with x1
    paired, gap, spectra = [], [], {}
    want = {max(1, min(steps, round(f * steps))): f for f in spectra_at}
    for k in range(1, steps + 1):
        t = ts[k].expand(x0.shape[0])
        x_true = interpolate(x0, x1, t)
        delta = x - x_true
        paired.append((delta.pow(2).flatten(1).sum(1) / d).mean().item())
        gap.append(((x.pow(2).flatten(1).sum(1) - x_true.pow(2).flatten(1).sum(1)) / d).mean().item())
        if k in want:
            spectra[f"{ts[k].item():.2f}"] = radial_power_spectrum(delta).tolist()
        if k < steps:
            v = model(x, t, y)
            x = x + (ts[k + 1] - ts[k]) * v.float()
    return {"t": ts[1:].tolist(), "paired_error": paired, "energy_gap": gap, "spectra": spectra}


def radial_power_spectrum(x: torch.Tensor) -> np.ndarray:
    """Mean |FFT2|^2 / (H*W) over samples and channels, averaged over rings of integer radius
    (in frequency-index units, shifted so 0 is the DC term); length min(H, W)//2 + 1."""
    h, w = x.shape[-2:]
    p = torch.fft.fftshift(torch.fft.fft2(x.double()).abs().pow(2) / (h * w), dim=(-2, -1)).mean((0, 1))
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    r = (yy.double().pow(2) + xx.double().pow(2)).sqrt().round().long()
    n = min(h, w) // 2 + 1
    out = torch.zeros(n, dtype=torch.float64)
    cnt = torch.zeros(n, dtype=torch.float64)
    keep = r < n
    out.index_add_(0, r[keep], p.cpu()[keep])
    cnt.index_add_(0, r[keep], torch.ones_like(p.cpu()[keep]))
    return (out / cnt.clamp(min=1)).numpy()
