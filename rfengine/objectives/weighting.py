"""The FM branch's loss as current recipes shape it (docs/objectives.md section 4.1): a per-sample weight over t
(Min-SNR-gamma written for the velocity loss on the linear path) and LightningDiT's cosine velocity
term. Every objective's FM-branch term goes through `FMTerm`, so each baseline composes with each
objective; with both off the term is the plain MSE of `F.mse_loss`, bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def min_snr_numerator(t, gamma: float):
    """min(t^2, gamma*(1 - t)^2): Min-SNR's min(SNR, gamma) on the data-prediction error, moved onto the
    velocity error (x1_hat - x1 = (1 - t)(v - u), SNR = t^2/(1 - t)^2). For tensors and numpy arrays."""
    a, b = t * t, gamma * (1 - t) * (1 - t)
    return np.minimum(a, b) if isinstance(t, np.ndarray) else torch.minimum(a, b)


def time_mean(fn, time_sampler: str, mean: float = 0.0, std: float = 1.0, points: int = 200_001) -> float:
    """E[fn(t)] under the training time distribution (`uniform` or `logit_normal`), by quadrature in
    float64 numpy on the host: computed once per objective, never on the device, and unaffected by a
    torch mode around the construction (the planner builds objectives under FakeTensorMode)."""
    if time_sampler == "uniform":
        t = (np.arange(points, dtype=np.float64) + 0.5) / points               # midpoints of (0, 1)
        return float(fn(t).mean())
    if time_sampler == "logit_normal":
        # t = sigmoid(mean + std*n), n ~ N(0, 1): integrate over n on +-12 sigma (the tails carry < 1e-30)
        n = np.linspace(-12.0, 12.0, points, dtype=np.float64)
        density = np.exp(-0.5 * n * n) / math.sqrt(2 * math.pi)
        return float(np.trapezoid(fn(1.0 / (1.0 + np.exp(-(mean + std * n)))) * density, n))
    raise ValueError(f"objective.time_sampler: expected 'uniform' or 'logit_normal', got {time_sampler!r}")


class FMTerm:
    """The FM-branch loss of `objective.weighting` and `objective.cosine_weight` for one config."""

    def __init__(self, cfg):
        self.weighting, self.gamma, self.cosine = cfg.weighting, cfg.min_snr_gamma, cfg.cosine_weight
        self.norm = 1.0
        if self.weighting == "min_snr":  # c: the weight's mean under the sampler, so the loss keeps FM's scale
            self.norm = time_mean(lambda t: min_snr_numerator(t, self.gamma), cfg.time_sampler,
                                  cfg.logit_mean, cfg.logit_std)
        elif self.weighting != "none":
            raise ValueError(f"objective.weighting: expected 'none' or 'min_snr', got {self.weighting!r}")

    @property
    def plain(self) -> bool:
        """Whether the term is the plain MSE (no time weight, no cosine term)."""
        return self.weighting == "none" and self.cosine == 0

    def time_weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """The per-sample weight (B,) in fp32, or None for `none`."""
        if self.weighting == "none":
            return None
        return min_snr_numerator(t.float(), self.gamma) / self.norm

    def __call__(self, v: torch.Tensor, u: torch.Tensor, t: torch.Tensor,
                 per_sample: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of the prediction v against the velocity u (B, C, H, W) at times t (B,), in fp32.
        `per_sample` (B,) replaces the squared error's per-sample means (FC's reweighted MSE)."""
        if per_sample is None and self.plain:
            return F.mse_loss(v.float(), u)
        if per_sample is None:
            per_sample = (v.float() - u).pow(2).flatten(1).mean(1)
        w = self.time_weight(t)
        loss = (per_sample if w is None else per_sample * w).mean()
        if self.cosine > 0:
            cos = F.cosine_similarity(v.float().flatten(1), u.flatten(1), dim=1, eps=1e-8)
            loss = loss + self.cosine * (1 - cos).mean()
        return loss
