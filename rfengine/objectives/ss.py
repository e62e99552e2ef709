"""Scheduled sampling (SDSS for K = 1, MDSS for K > 1): the ADR rollout of `objective.adr`, then
plain MSE of v(xhat, t, y) against the original velocity u = x1 - x0."""
from __future__ import annotations

from rfengine.flow import velocity
from rfengine.objectives.base import Objective
from rfengine.objectives.rollout import rollout, rollout_metrics


class ScheduledSampling(Objective):
    """docs/objectives.md section 4, `ss`."""

    name = "ss"

    def loss(self, model, x1, y, step):
        x1 = x1.float()
        x0, t = self.draw(x1)
        r = rollout(model, x0, x1, y, t, self.cfg.adr, keep_graph=self.cfg.adr.grad_through_rollout)
        v = model(r.xhat, t, y)
        loss = self.fm_term(v, velocity(x0, x1), t)
        return loss, {"loss": loss.detach(), **(rollout_metrics(r, t) if self.extra_metrics_at(step) else {})}
