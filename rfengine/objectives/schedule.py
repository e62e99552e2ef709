"""Objectives switched on late (docs/objectives.md section 6.2): plain FM before `objective.start`, then the
configured objective, with `adr.prob` optionally ramped linearly from 0 over `objective.ramp` steps.

The schedule is a function of the step only, so a run resumed on either side of the switch draws
exactly what the uninterrupted run draws. Before the switch the step is exactly `fm` (same draws, one
forward); after it, exactly the configured objective at that step's `adr.prob`.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from rfengine.config import resolve_steps
from rfengine.objectives.base import Objective
from rfengine.objectives.fm import FlowMatching

log = logging.getLogger("rfengine")


class Scheduled(Objective):
    """`fm` for steps < start, then `inner` (an objective built from the same config)."""

    def __init__(self, inner: Objective, start: int, ramp: int):
        super().__init__(inner.cfg, inner.metrics_every, inner.total_steps)
        self.inner, self.fm = inner, FlowMatching(inner.cfg, inner.metrics_every, inner.total_steps)
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


def pin_schedule(objective: Objective, cfg, total_steps: int, recorded: dict | None) -> tuple[Objective, dict]:
    """The run's switch (and ramp) as steps, fixed at its first start: a fractional `objective.start`
    resolved against a resumed run's (perhaps larger) `train.steps` would move the switch, and steps
    already trained after it would go back to FM. `recorded` is what the run's checkpoint holds
    (`{"start", "ramp"}` as steps, `{"start_given", "ramp_given"}` as configured) or None at the first
    start; a resume whose config gives the same values keeps the recorded steps, one that asks for
    other values gets them, with one line that says so. Returns the objective (behind its schedule
    when it has one) and the record to keep in checkpoints."""
    steps = {}
    for key in ("start", "ramp"):
        given = getattr(cfg, key)
        now = resolve_steps(given, total_steps)
        if recorded is None or key not in recorded:
            steps[key] = now
        elif given == recorded[f"{key}_given"]:
            steps[key] = int(recorded[key])
        else:
            steps[key] = now
            if now != recorded[key]:
                log.warning("objective.%s: the run was started with %s (step %d); this resume asks for %s: from "
                            "here on the switch is step %d", key, recorded[f"{key}_given"], recorded[key], given, now)
    if isinstance(objective, Scheduled):
        objective.start, objective.ramp = steps["start"], steps["ramp"]
    elif steps["start"] or steps["ramp"]:
        objective = Scheduled(objective, steps["start"], steps["ramp"])
    return objective, {**steps, "start_given": cfg.start, "ramp_given": cfg.ramp}
