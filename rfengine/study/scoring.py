"""Scoring an unconditional digits model: FD, precision and recall in the digit classifier's feature
space at several Euler budgets, and the exposure-bias diagnostics, every model on the same noise."""
from __future__ import annotations

import numpy as np
import torch

SHAPE = (1, 16, 16)


class Scorer:
    """Scores an unconditional digits model against the 1797 real images. Every model sees the same
    noise (sample i's noise depends on i only), so differences between models are not sampling noise."""

    def __init__(self, samples: int = 2000, sample_steps=(5, 10, 20, 50), bias_steps: int = 20,
                 batch: int = 250, bias_samples: int = 256, classifier: str | None = None):
        from rfengine.data.digits import DigitsDataset
        from rfengine.eval import DigitsFeatures, feature_stats
        self.bias_samples = bias_samples
        self.samples, self.sample_steps, self.bias_steps, self.batch = samples, list(sample_steps), bias_steps, batch
        # `classifier`: a study's pinned feature extractor; otherwise the package's shipped one (the same file)
        self.feats = DigitsFeatures(classifier)
        self.real_x = DigitsDataset(16).images
        self.real_feats = self.feats(self.real_x)
        self.real_stats = feature_stats(self.real_feats)
        self.noise = torch.randn((samples, *SHAPE), generator=torch.Generator().manual_seed(12345))

    @torch.inference_mode()
    def generate(self, model, steps: int, n: int) -> torch.Tensor:
        from rfengine.sample import generate
        out = [generate(model, shape=SHAPE, n=min(self.batch, n - i), labels=None, steps=steps,
                        noise=self.noise[i:i + self.batch][: n - i]) for i in range(0, n, self.batch)]
        return torch.cat(out).clamp(-1, 1)

    def _fd_pr(self, model, steps: int, n: int, pr: bool) -> dict:
        from rfengine.eval import feature_stats, frechet_distance, precision_recall
        f = self.feats(self.generate(model, steps, n))
        out = {"fd": frechet_distance(*feature_stats(f), *self.real_stats)}
        if pr:
            out["precision"], out["recall"] = precision_recall(self.real_feats, f)
        return out

    def fd(self, model, steps: int, n: int) -> float:
        return self._fd_pr(model, steps, n, pr=False)["fd"]

    def full(self, model) -> dict:
        """FD, precision and recall at every sampling budget; exposure bias (paired error, energy gap)."""
        from rfengine.eval.diagnostics import exposure_bias
        by_steps = {str(k): self._fd_pr(model, k, self.samples, pr=True) for k in self.sample_steps}
        g = torch.Generator().manual_seed(777)
        idx = torch.randperm(self.real_x.shape[0], generator=g)[:self.bias_samples]
        x0 = torch.randn((self.bias_samples, *SHAPE), generator=g)
        bias = exposure_bias(model, x0, self.real_x[idx], None, self.bias_steps)
        return {"by_steps": by_steps, "paired_error_mean": float(np.mean(bias["paired_error"])),
                "energy_gap_end": bias["energy_gap"][-1], "bias": bias}
