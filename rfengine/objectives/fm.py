"""Vanilla flow matching (SiT), the baseline every other objective reduces to."""
from __future__ import annotations

from rfengine.objectives.base import Objective


class FlowMatching(Objective):
    """L_FM = mean((v(x_t, t, y) - (x1 - x0))^2)."""

    name = "fm"

    def loss(self, model, x1, y, step):
        x0, t = self.draw(x1.float())
        loss = self.fm_loss(model, x0, x1.float(), t, y)
        return loss, {"loss": loss.detach(), "t_mean": t.mean()}
