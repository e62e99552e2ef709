"""Input perturbation (DDPM-IP translated to flow matching): the model sees
t*x1 + (1 - t)*(x0 + gamma*xi) but is trained towards the unperturbed velocity x1 - x0."""
from __future__ import annotations

import torch

from rfengine.flow import interpolate, velocity
from rfengine.objectives.base import Objective


class InputPerturbation(Objective):
    """docs/objectives.md section 4, `ip`."""

    name = "ip"

    def loss(self, model, x1, y, step):
        x1 = x1.float()
        x0, t = self.draw(x1)
        xi = torch.randn_like(x0)
        v = model(interpolate(x0 + self.cfg.ip.gamma * xi, x1, t), t, y)
        loss = self.fm_term(v, velocity(x0, x1), t)
        return loss, {"loss": loss.detach(), "t_mean": t.mean()}
