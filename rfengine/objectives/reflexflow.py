"""ReflexFlow (docs/objectives.md section 3): flow matching plus Anti-Drift Rectification (ADR) and Frequency
Compensation (FC).

Per batch: FM times t from the FM branch's own distribution; a K-step rollout of the current model
from an earlier true state x_s gives the drifted state xhat, the rectified target uhat and the
input-space bias delta_x. The clean state goes through the model with gradient; with ADR on, the
drifted states do too (one concatenated batch when `concat_branches`); with FC alone on the velocity
bias they go through without gradient (only v_hat's value is needed). With `adr.prob < 1` only the
rolled samples' drifted states are sent through the model: for the others xhat = x_t exactly, so their
v_hat is v_clean itself (same value, same gradient), and the step costs (3 + 4p)/3 FM steps, not 2.33;
  L = fc.weight * FM_term(w * (v_clean - u)^2) + adr.weight * L_ADR(v_hat, uhat, t),
where w is the FC weight from the low-passed exposure bias (velocity space by default; `fc.bias_space:
self` takes the training forward's own error and needs no rollout) and FM_term is the FM branch's loss
with `objective.weighting` and `objective.cosine_weight`.
With adr.weight = 0 and fc.alpha = 0 this is exactly vanilla FM: the same draws, one forward.
"""
from __future__ import annotations

import torch

import kernels
from rfengine.flow import interpolate, velocity
from rfengine.objectives.base import Objective
from rfengine.objectives.rollout import no_grad_mode, rollout, rollout_metrics, take


class ReflexFlow(Objective):
    """docs/objectives.md section 3, with every ablation switch of `objective.adr` and `objective.fc`."""

    name = "reflexflow"

    @property
    def batch_differs_from_data(self) -> bool:
        """Whether the model sees batches other than the data batch (a rollout, or a concatenated batch)."""
        return self.needs_rollout

    @property
    def varies_batch(self) -> bool:
        """`adr.prob < 1` rolls out a subset; under a ramp its size changes from step to step."""
        return self.needs_rollout and self.cfg.adr.prob < 1

    @property
    def needs_rollout(self) -> bool:
        """ADR's loss needs the drifted states; FC needs them unless it weights by its own error."""
        adr, fc = self.cfg.adr, self.cfg.fc
        return adr.weight > 0 or (fc.alpha > 0 and fc.bias_space != "self")

    def loss(self, model, x1, y, step):
        adr, fc = self.cfg.adr, self.cfg.fc
        x1 = x1.float()
        x0, t = self.draw(x1)
        adr_on, fc_on = adr.weight > 0, fc.alpha > 0
        if not (adr_on or fc_on):  # L_FC = L_FM when fc.alpha = 0, still scaled by fc.weight (section 3 step 8)
            loss = fc.weight * self.fm_loss(model, x0, x1, t, y)
            return loss, {"loss": loss.detach(), "loss_fc": loss.detach(), "t_mean": t.mean()}

        x_t, u = interpolate(x0, x1, t), velocity(x0, x1)
        if not self.needs_rollout:  # FC on its own error: one forward, as FM
            v_clean = model(x_t, t, y)
            metrics = {"t_mean": t.mean()}
            delta = v_clean.detach().float() - u
            return self._finish(v_clean, u, t, delta, None, None, metrics, step)

        r = rollout(model, x0, x1, y, t, adr, keep_graph=adr_on and adr.grad_through_rollout)
        # The drifted states worth a forward: all of them, or only the rolled ones.
        x_h, t_h, y_h = (r.xhat[r.idx], t[r.idx], take(y, r.idx)) if r.partial else (r.xhat, t, y)
        b = t.shape[0]
        v_hat = v_sub = None
        if adr_on and self.cfg.concat_branches:
            v_all = model(torch.cat([x_t, x_h]), torch.cat([t, t_h]), None if y is None else torch.cat([y, y_h]))
            v_clean, v_sub = v_all[:b], v_all[b:]
        else:  # (the drifted call runs even on an empty subset: under FSDP every call is a collective)
            v_clean = model(x_t, t, y)
            if adr_on:
                v_sub = model(x_h, t_h, y_h)
            elif fc_on and fc.bias_space == "velocity":  # FC alone on the velocity bias: v_hat without gradient
                with no_grad_mode(model):
                    v_sub = model(x_h, t_h, y_h)
        if v_sub is not None:
            base = v_clean if adr_on else v_clean.detach()
            v_hat = base.index_copy(0, r.idx, v_sub) if r.partial else v_sub

        delta = None
        if fc_on:
            delta = {"velocity": lambda: v_clean.detach() - v_hat.detach(), "input": lambda: r.delta_x.detach(),
                     "self": lambda: v_clean.detach().float() - u}[fc.bias_space]()
        metrics = rollout_metrics(r, t) if self.extra_metrics_at(step) else {}
        return self._finish(v_clean, u, t, delta, v_hat, r, metrics, step)

    def _finish(self, v_clean, u, t, delta, v_hat, r, metrics: dict, step: int):
        """The total loss from the branches' outputs: FC-weighted FM term (plain MSE when `delta` is None)
        plus the ADR loss when `v_hat` is given."""
        adr, fc = self.cfg.adr, self.cfg.fc
        if delta is not None:
            fc_args = dict(mask=fc.mask, cutoff=fc.cutoff, alpha=fc.alpha, t=t, t_max=fc.t_max)
            per_sample = kernels.fc_weighted_mse(v_clean, u, delta, reduction="none", **fc_args)
            loss_fc = self.fm_term(v_clean, u, t, per_sample=per_sample)
            if self.extra_metrics_at(step):
                w = kernels.fc_weight(delta, **fc_args)
                metrics.update(fc_w_mean=w.mean(), fc_w_max=w.max())
        else:
            loss_fc = self.fm_term(v_clean, u, t)
        loss = fc.weight * loss_fc
        if adr.weight > 0:
            loss_adr = kernels.adr_loss(v_hat, r.uhat, t, kind=adr.loss)
            loss = loss + adr.weight * loss_adr
            metrics["loss_adr"] = loss_adr.detach()
        metrics.update(loss=loss.detach(), loss_fc=loss_fc.detach())
        return loss, metrics
