"""Objectives switched on late (SPEC section 6.2): plain FM before `objective.start`, then the
configured objective, with `adr.prob` optionally ramped linearly from 0 over `objective.ramp` steps.

The schedule is a function of the step only, so a run resumed on either side of the switch draws
exactly what the uninterrupted run draws. Before the switch the step is exactly `fm` (same draws, one
forward); after it, exactly the configured objective at that step's `adr.prob`.
"""
from __future__ import annotations

import dataclasses

import torch

from rfengine.config import resolve_steps
from rfengine.objectives.base import Objective
from rfengine.objectives.fm import FlowMatching


class Scheduled(Objective):
    """`fm` for steps < start, then `inner` (an objective built from the same config)."""

    def __init__(self, inner: Objective, start: int, ramp: int):
        super().__init__(inner.cfg, inner.metrics_every)
        self.inner, self.fm = inner, FlowMatching(inner.cfg, inner.metrics_every)
        self.start, self.ramp = start, ramp
        self.name = inner.name
        # FM's batch before the switch, the objective's after it: a change of size at the switch
        self.varies_batch = inner.varies_batch or inner.batch_differs_from_data
        self._cfgs: dict[float, object] = {}

    def adr_prob(self, step: int) -> float:
        """The share of rolled samples at `step` (after the switch)."""
        full = self.cfg.adr.prob
        if self.ramp <= 0:
            return full
        return full * min(1.0, (step - self.start + 1) / self.ramp)

    def active(self, step: int) -> bool:
        """Whether the configured objective (not plain FM) trains at `step`."""
        return step >= self.start

    def loss(self, model, x1, y, step):
        if not self.active(step):
            return self.fm.loss(model, x1, y, step)
        p = self.adr_prob(step)
        if p not in self._cfgs:  # the user's config stays as it is; the inner objective sees this step's prob
            self._cfgs[p] = dataclasses.replace(self.cfg, adr=dataclasses.replace(self.cfg.adr, prob=p))
        self.inner.cfg = self._cfgs[p]
        loss, metrics = self.inner.loss(model, x1, y, step)
        # on the loss's device: the trainer stacks every metric into one tensor there
        metrics["adr_prob"] = torch.full((), p, device=loss.device)
        return loss, metrics
