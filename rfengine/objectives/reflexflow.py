"""ReflexFlow (SPEC section 3): flow matching plus Anti-Drift Rectification (ADR) and Frequency
Compensation (FC).

Per batch: FM times t from the FM branch's own distribution; a K-step rollout of the current model
from an earlier true state x_s gives the drifted state xhat, the rectified target uhat and the
input-space bias delta_x; the clean and drifted states then go through the model with gradient,
as one concatenated batch when `concat_branches`;
  L = fc.weight * mean(w * (v_clean - u)^2) + adr.weight * L_ADR(v_hat, uhat, t),
where w is the FC weight from the low-passed exposure bias (velocity space by default).
With adr.weight = 0 and fc.alpha = 0 this is exactly vanilla FM: the same draws, one forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels
from rfengine.flow import interpolate, velocity
from rfengine.objectives.base import Objective, cat_labels
from rfengine.objectives.rollout import rollout, rollout_metrics


class ReflexFlow(Objective):
    """SPEC section 3, with every ablation switch of `objective.adr` and `objective.fc`."""

    name = "reflexflow"

    def loss(self, model, x1, y, step):
        adr, fc = self.cfg.adr, self.cfg.fc
        x1 = x1.float()
        x0, t = self.draw(x1)
        adr_on, fc_on = adr.weight > 0, fc.alpha > 0
        if not (adr_on or fc_on):
            loss = self.fm_loss(model, x0, x1, t, y)
            return loss, {"loss": loss.detach(), "loss_fc": loss.detach(), "t_mean": t.mean()}

        x_t, u = interpolate(x0, x1, t), velocity(x0, x1)
        r = rollout(model, x0, x1, y, t, adr)
        v_hat = None
        if adr_on and self.cfg.concat_branches:
            v_clean, v_hat = model(torch.cat([x_t, r.xhat]), torch.cat([t, t]), cat_labels(y)).chunk(2)
        else:
            v_clean = model(x_t, t, y)
            if adr_on:
                v_hat = model(r.xhat, t, y)
            elif fc_on and fc.bias_space == "velocity":  # FC alone still needs v_hat, without gradient
                with torch.no_grad():
                    v_hat = model(r.xhat, t, y)

        metrics = rollout_metrics(r, t)
        if fc_on:
            delta = (v_clean.detach() - v_hat.detach()) if fc.bias_space == "velocity" else r.delta_x.detach()
            fc_args = dict(mask=fc.mask, cutoff=fc.cutoff, alpha=fc.alpha, t=t, t_max=fc.t_max)
            loss_fc = kernels.fc_weighted_mse(v_clean, u, delta, **fc_args)
            if self.detailed(step):
                w = kernels.fc_weight(delta, **fc_args)
                metrics.update(fc_w_mean=w.mean(), fc_w_max=w.max())
        else:
            loss_fc = F.mse_loss(v_clean.float(), u)
        loss = fc.weight * loss_fc
        if adr_on:
            loss_adr = kernels.adr_loss(v_hat, r.uhat, t, kind=adr.loss)
            loss = loss + adr.weight * loss_adr
            metrics["loss_adr"] = loss_adr.detach()
        metrics.update(loss=loss.detach(), loss_fc=loss_fc.detach())
        return loss, metrics
