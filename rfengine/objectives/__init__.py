"""Training objectives behind one interface, `loss(model, x1, y, step) -> (loss, metrics)`."""
from __future__ import annotations

from rfengine.objectives.base import Objective
from rfengine.objectives.fm import FlowMatching
from rfengine.objectives.ip import InputPerturbation
from rfengine.objectives.reflexflow import ReflexFlow
from rfengine.config import resolve_steps
from rfengine.objectives.schedule import Scheduled, pin_schedule
from rfengine.objectives.ss import ScheduledSampling

OBJECTIVES = {cls.name: cls for cls in (FlowMatching, InputPerturbation, ScheduledSampling, ReflexFlow)}


def build_objective(cfg, metrics_every: int = 1, total_steps: int = 0) -> Objective:
    """The objective named by `cfg.name` (an `ObjectiveConfig`), behind its schedule when
    `cfg.start` or `cfg.ramp` is set (fractions of `total_steps`)."""
    if cfg.name not in OBJECTIVES:
        raise ValueError(f"objective.name: unknown {cfg.name!r}; valid: {', '.join(OBJECTIVES)}")
    objective = OBJECTIVES[cfg.name](cfg, metrics_every, total_steps)
    start, ramp = resolve_steps(cfg.start, total_steps), resolve_steps(cfg.ramp, total_steps)
    if start or ramp:
        return Scheduled(objective, start, ramp)
    return objective


__all__ = ["Objective", "OBJECTIVES", "build_objective", "FlowMatching", "InputPerturbation",
           "ScheduledSampling", "ReflexFlow", "Scheduled", "pin_schedule"]
