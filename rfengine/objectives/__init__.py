"""Training objectives behind one interface, `loss(model, x1, y, step) -> (loss, metrics)`."""
from __future__ import annotations

from rfengine.objectives.base import Objective
from rfengine.objectives.fm import FlowMatching
from rfengine.objectives.ip import InputPerturbation
from rfengine.objectives.reflexflow import ReflexFlow
from rfengine.objectives.ss import ScheduledSampling

OBJECTIVES = {cls.name: cls for cls in (FlowMatching, InputPerturbation, ScheduledSampling, ReflexFlow)}


def build_objective(cfg, metrics_every: int = 1) -> Objective:
    """The objective named by `cfg.name` (an `ObjectiveConfig`)."""
    if cfg.name not in OBJECTIVES:
        raise ValueError(f"objective.name: unknown {cfg.name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.name](cfg, metrics_every)


__all__ = ["Objective", "OBJECTIVES", "build_objective", "FlowMatching", "InputPerturbation",
           "ScheduledSampling", "ReflexFlow"]
