"""The distances between a sample set and a reference set, as ADM's evaluator (guided-diffusion's
`evaluations/evaluator.py`) defines them: Fréchet distance between Gaussian fits of two feature sets (FID, sFID),
k-NN precision/recall (Kynkäänniemi et al., 2019; k = 3, squared Euclidean distances, batched), and the Inception
Score (splits of 5000 in file order, the mean over splits). Everything here works on features in batches, so the
statistics of 50,000 samples never need their images at once.
"""
from __future__ import annotations

import numpy as np
import torch


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D, np.cov's ddof=1), float64, of features (N, D)."""
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


class RunningStats:
    """Mean and covariance of feature rows that arrive in batches: `update(feats (b, D))`, then `stats()`, equal to
    `feature_stats` of all rows at once. Sums are float64 and taken around the first batch's mean (no cancellation
    when the mean is large against the spread); memory is O(D^2) whatever the number of rows."""

    def __init__(self):
        self.n = 0
        self.shift = self.s1 = self.s2 = None

    def update(self, feats: np.ndarray) -> None:
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or (self.shift is not None and x.shape[1] != len(self.shift)):
            want = "(b, D)" if self.shift is None else f"(b, {len(self.shift)})"
            raise ValueError(f"feats: expected {want}, got {x.shape}")
        if self.shift is None:
            self.shift = x.mean(0)
            self.s1, self.s2 = np.zeros_like(self.shift), np.zeros((x.shape[1], x.shape[1]))
        x = x - self.shift
        self.n += len(x)
        self.s1 += x.sum(0)
        self.s2 += x.T @ x

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D)) of the rows so far; needs at least 2 rows."""
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 feature rows, got {self.n}")
        mean = self.s1 / self.n
        return self.shift + mean, (self.s2 - self.n * np.outer(mean, mean)) / (self.n - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) for means (D,) and covariances (D, D). Tr sqrt(S1 S2) is the
    sum of the square roots of the eigenvalues of S1 S2 (real and >= 0 for PSD S1, S2; round-off is clipped), which
    stays stable where the matrix square root of a singular product does not (dead feature units). Where S1 or S2
    is positive definite, S = L L^T, they are the eigenvalues of the symmetric L^T S' L (3-4x faster at D = 2048
    than the general eigensolver, which is the fallback)."""
    if np.shape(mu1) != np.shape(mu2) or np.shape(sigma1) != np.shape(sigma2):
        raise ValueError(f"frechet_distance: statistics of {np.shape(mu1)} and {np.shape(mu2)} features differ")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    for a, b in ((s1, s2), (s2, s1)):
        try:
            low = np.linalg.cholesky(a)
        except np.linalg.LinAlgError:  # singular (a sample set smaller than D, dead units): try the other
            continue
        return float(np.sqrt(np.linalg.eigvalsh(low.T @ b @ low).clip(min=0)).sum())
    return float(np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(min=0)).sum())


def _sq_norms(x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([(rows * rows).sum(1) for rows in x.split(batch)])          # (N,), no (N, D) temporary


def _sq_dists(a: torch.Tensor, b: torch.Tensor, a_norms: torch.Tensor, b_norms: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, m) between rows of a (n, D) and b (m, D), as ADM computes them
    (|a|^2 - 2 a.b + |b|^2, clipped at 0), in one (n, m) buffer."""
    return (a @ b.T).mul_(-2).add_(a_norms[:, None]).add_(b_norms[None]).clamp_(min=0)


def manifold_radii(feats: torch.Tensor, k: int = 3, batch: int = 1024) -> torch.Tensor:
    """Squared distance of each row of feats (N, D) to its k-th nearest other row, (N,); `batch` rows at a time."""
    norms = _sq_norms(feats, batch)
    return torch.cat([_sq_dists(feats[s:s + batch], feats, norms[s:s + batch], norms)
                      .topk(k + 1, dim=1, largest=False).values[:, k] for s in range(0, len(feats), batch)])


def precision_recall(real, fake, k: int = 3, batch: int = 1024, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """ADM's improved precision and recall of features fake (Nf, D) against real (Nr, D): precision is the share of
    fake rows inside the real manifold (the union of balls around each real row reaching its k-th nearest real
    neighbour), recall the share of real rows inside the fake manifold. All rows of both sets take part; distances
    are computed `batch` rows at a time on `device` (memory O(batch * max(Nr, Nf)))."""
    r = torch.as_tensor(np.asarray(real), device=device).to(dtype)
    f = torch.as_tensor(np.asarray(fake), device=device).to(dtype)
    for name, x in (("real", r), ("fake", f)):
        if x.ndim != 2 or x.shape[0] <= k or x.shape[1] != r.shape[1]:
            raise ValueError(f"precision_recall: {name} features must be (N > {k}, {r.shape[-1]}), "
                             f"got {tuple(x.shape)}")
    real_radii, fake_radii = manifold_radii(r, k, batch), manifold_radii(f, k, batch)
    r_norms, f_norms = _sq_norms(r, batch), _sq_norms(f, batch)
    fake_in = torch.zeros(len(f), dtype=torch.bool, device=device)
    real_in = torch.zeros(len(r), dtype=torch.bool, device=device)
    for start in range(0, len(f), batch):
        d = _sq_dists(f[start:start + batch], r, f_norms[start:start + batch], r_norms)   # (b, Nr)
        fake_in[start:start + batch] = (d <= real_radii[None]).any(1)
        real_in |= (d <= fake_radii[start:start + batch, None]).any(0)
    return fake_in.double().mean().item(), real_in.double().mean().item()


def inception_score(logits_fn, pool: np.ndarray, split: int = 5000, batch: int = 1000) -> float:
    """ADM's Inception Score of pool features (N, D): p = softmax(logits_fn(pool rows)), per split of `split`
    consecutive rows exp(mean KL(p || mean p)), and the mean over splits (the last may be shorter). Float64."""
    scores = []
    for s in range(0, len(pool), split):
        end = min(s + split, len(pool))
        logp = torch.cat([torch.log_softmax(logits_fn(torch.as_tensor(pool[i:min(i + batch, end)])).double(), 1)
                          for i in range(s, end, batch)])                          # (split, classes)
        p = logp.exp()
        kl = (p * (logp - p.mean(0, keepdim=True).log())).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores))
