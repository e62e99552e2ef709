"""Fréchet distance between Gaussian fits of two feature sets, and k-NN precision/recall
(Kynkäänniemi et al., 2019) where the sets are small enough for pairwise distances."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)). Tr sqrt(S1 S2) is the sum of the square roots
    of the eigenvalues of S1 S2 (real and >= 0 for PSD S1, S2; round-off is clipped), which stays
    stable where the matrix square root of a singular product does not (dead feature units)."""
    diff = mu1 - mu2
    eig = np.linalg.eigvals(sigma1 @ sigma2).real.clip(min=0)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eig).sum())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: share of fake samples inside the real k-NN manifold; recall: the converse."""
    r = torch.as_tensor(real, dtype=torch.float64)
    f = torch.as_tensor(fake, dtype=torch.float64)

    def radii(x):
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # the 0 distance to itself is the first

    def coverage(points, support, support_radii):
        return (torch.cdist(points, support) <= support_radii[None, :]).any(1).double().mean().item()

    return coverage(f, r, radii(r)), coverage(r, f, radii(f))


@dataclass
class FDResult:
    fd: float
    precision: float
    recall: float
    n_fake: int
    n_real: int
