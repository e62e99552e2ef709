"""The objective interface: `loss(model, x1, y, step) -> (loss, metrics)`.

`model(x, t, y)` is any callable returning the velocity (B, C, H, W); x1 is a data batch
(B, C, H, W) and y its labels (B,) or None (label dropout has already been applied). `loss` is a
scalar fp32 tensor with a graph; `metrics` maps names to detached 0-dim tensors, so that nothing
waits on the device until the trainer logs. Randomness comes from the global torch RNG, in a fixed
order (noise x0 first, then t), so that every objective with its extras switched off draws exactly
what `fm` draws.
"""
from __future__ import annotations

import torch

from rfengine.flow import interpolate, sample_times, velocity
from rfengine.objectives.weighting import FMTerm
from rfengine.telemetry import logs_at


class Objective:
    """Shared pieces: the FM branch's own time distribution and the vanilla FM loss."""

    name = "base"
    # Whether the model sees batch sizes other than the data batch's (ReflexFlow's concatenated
    # branches and rolled subsets), and whether they change from step to step. A compiled model is
    # then told the batch dimension is dynamic from the first step (`parallel.apply_compile`), so a
    # new size costs no recompile.
    batch_differs_from_data = False
    varies_batch = False

    def __init__(self, cfg, metrics_every: int = 1, total_steps: int = 0):
        self.cfg = cfg
        self.metrics_every, self.total_steps = metrics_every, total_steps  # the run's train.log_every, train.steps
        self.fm_term = FMTerm(cfg)  # the FM branch's loss: time weighting and cosine term (docs/objectives.md section 4.1)

    def extra_metrics_at(self, step: int) -> bool:
        """Whether the step at 0-based index `step` also computes the metrics that cost extra device work:
        exactly the steps the trainer logs, which it numbers `step + 1`."""
        return logs_at(step + 1, self.metrics_every, self.total_steps)

    def draw(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise x0 (like x1, fp32) and FM times t (B,) in [0, 1]."""
        x0 = torch.randn(x1.shape, device=x1.device, dtype=torch.float32)
        t = sample_times(x1.shape[0], self.cfg.time_sampler, mean=self.cfg.logit_mean, std=self.cfg.logit_std,
                         device=x1.device)
        return x0, t

    def fm_loss(self, model, x0, x1, t, y) -> torch.Tensor:
        """Flow matching: mean((v(x_t, t, y) - u)^2) over all elements, in fp32, shaped by
        `objective.weighting` and `objective.cosine_weight` (vanilla FM when both are off)."""
        v = model(interpolate(x0, x1, t), t, y)
        return self.fm_term(v, velocity(x0, x1), t)

    def loss(self, model, x1, y, step):  # pragma: no cover - interface
        raise NotImplementedError

