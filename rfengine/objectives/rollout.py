"""The ADR rollout shared by ReflexFlow and scheduled sampling (docs/objectives.md section 3, steps 1-3, and 4.3).

For FM times t, pick earlier start times s, take K steps of the current model from the true state x_s
to reach the model's own state xhat at t, and fuse the last step's update with the rectified target
uhat = (x1 - xhat)/max(1 - t, eps) and the input-space bias delta_x = xhat - x_t.

The steps are those of the sampler the rollout is matched to (`adr.integrator`, `adr.infer_steps`,
`adr.shift`): Euler, or Heun (v1 = v(x_a, a), v2 = v(x_a + h v1, b), x_b = x_a + h (v1 + v2)/2: two no-grad
forwards a step), on the grid of `infer_steps` steps shifted by `shift_time(., shift)`. The last step's
update goes through the fused op with the step's effective velocity (v1, or (v1 + v2)/2), so xhat, uhat
and delta_x keep their definitions; Heun's extra evaluation happens before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from rfengine.flow import expand_t, interpolate, shift_time, unshift_time


@dataclass
class Rollout:
    """What one rollout produces; every tensor has the batch's leading dimension B."""
    s: torch.Tensor            # (B,) start times (s = t where no rollout)
    rolled: torch.Tensor       # (B,) bool, which samples were rolled out
    xhat: torch.Tensor         # (B, C, H, W) the model's own state at t
    uhat: torch.Tensor         # (B, C, H, W) rectified target
    delta_x: torch.Tensor      # (B, C, H, W) xhat - x_t; exactly 0 on the rows not rolled out
    idx: torch.Tensor          # (n,) indices of the rolled samples (all of 0..B-1 at adr.prob = 1)

    @property
    def partial(self) -> bool:
        """Whether only some samples were rolled out (then xhat = x_t exactly for the others)."""
        return self.idx.numel() < self.rolled.numel()


def rolled_count(batch: int, prob: float) -> int:
    """How many of a process's `batch` samples are rolled out at `adr.prob`: round(prob*batch), at
    least one when prob > 0. A count fixed by the config, not drawn per sample: the rolled subset's size
    is known on the host, so choosing it reads nothing back from the device (a Bernoulli mask would
    need a `nonzero`, a device sync, every step) and its shape does not change from step to step."""
    if prob >= 1.0:
        return batch
    if prob <= 0.0:
        return 0
    return min(batch, max(1, int(round(prob * batch))))


def pair_times(t: torch.Tensor, adr) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start times s <= t for the rollout, the mask (B,) of rolled samples and their indices (n,).

    grid:    s = max(t - K/infer_steps, 0), the drift a sampler with infer_steps steps makes; on a grid
             shifted by `adr.shift`, K steps back in the unshifted time: s = shift(max(g(t) - K/N, 0)),
             g = shift^-1;
    uniform: s = t*U(0, 1).
    With `adr.prob` < 1 a random subset of `rolled_count` samples is rolled out; the others get s = t.
    """
    if adr.pairing == "grid":
        back = adr.steps / adr.infer_steps
        if adr.shift == 1.0:
            s = torch.clamp(t - back, min=0.0)
        else:
            s = shift_time(torch.clamp(unshift_time(t, adr.shift) - back, min=0.0), adr.shift)
    elif adr.pairing == "uniform":
        s = t * torch.rand_like(t)
    else:
        raise ValueError(f"adr.pairing: expected 'grid' or 'uniform', got {adr.pairing!r}")
    b = t.shape[0]
    n = rolled_count(b, adr.prob)
    if n == b:
        return s, torch.ones_like(t, dtype=torch.bool), torch.arange(b, device=t.device)
    idx = torch.randperm(b, device=t.device)[:n].sort().values
    rolled = torch.zeros_like(t, dtype=torch.bool).index_fill_(0, idx, True)
    return torch.where(rolled, s, t), rolled, idx


def step_times(s: torch.Tensor, t: torch.Tensor, adr) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The K + 1 times (each (B,)) the rollout's K steps go through from s to t, and the K step sizes:
    evenly spaced, or on the shifted grid evenly spaced in the unshifted time (the sampler's own grid
    points between s and t). The first time is s and the last is t exactly; unshifted, every step is
    (t - s)/K (section 3's step, bit for bit)."""
    k_steps = adr.steps
    if adr.shift == 1.0:
        h = (t - s) / k_steps
        return [s + k * h for k in range(k_steps)] + [t], [h] * k_steps
    a, b = unshift_time(s, adr.shift), unshift_time(t, adr.shift)
    times = [s, *(shift_time(a + k * (b - a) / k_steps, adr.shift) for k in range(1, k_steps)), t]
    return times, [y - x for x, y in zip(times[:-1], times[1:])]


def take(y, idx):
    """Rows `idx` of labels y, or None for an unconditional model."""
    return None if y is None else y[idx]


def no_grad_mode(model):
    """`torch.inference_mode()` for the model calls that need no graph, or `torch.no_grad()` for an
    FSDP2-sharded model: FSDP2 keeps the unsharded parameters it allocates in the first forward for
    the later ones, and allocated under inference mode they could not be saved for backward."""
    params = getattr(model, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return torch.no_grad() if hasattr(first, "to_local") else torch.inference_mode()


def rollout(model, x0: torch.Tensor, x1: torch.Tensor, y, t: torch.Tensor, adr,
            keep_graph: bool = False) -> Rollout:
    """K steps of `model` (Euler or Heun, `adr.integrator`) from x_s to t, in the training precision (the
    caller's autocast).

    The model calls run under `torch.inference_mode` (no graph, no version counters; `no_grad_mode`
    explains the FSDP exception), except the last one when `keep_graph` (the caller's loss trains the
    step that made the drift: `adr.grad_through_rollout`; for Heun the last call is the second
    evaluation, v2 of the last step); then xhat, uhat and delta_x carry that call's graph. Only the
    rolled samples are sent through the model; the others keep xhat = x_t (h = 0) and get delta_x = 0
    exactly (masked, not recomputed: a fused kernel may round x_t differently from `interpolate`, and
    FC's scale-free weight would turn an ulp of difference into full contrast)."""
    s, rolled, idx = pair_times(t, adr)
    k_steps, heun = adr.steps, adr.integrator == "heun"
    if adr.integrator not in ("euler", "heun"):
        raise ValueError(f"adr.integrator: expected 'euler' or 'heun', got {adr.integrator!r}")
    times, hs = step_times(s, t, adr)
    x_s = interpolate(x0, x1, s)
    b = t.shape[0]
    subset = idx.numel() < b
    state = x_s[idx] if subset else x_s
    ys = take(y, idx) if subset else y
    sub = (lambda a: a[idx]) if subset else (lambda a: a)
    keep_graph = keep_graph and torch.is_grad_enabled()
    v = None

    def call(x, tau, graph: bool):
        # The model is called even when no sample of this process was rolled (an empty batch): under
        # FSDP every call is a collective, and one process skipping it would hang the others.
        if graph:
            return model(x, tau, ys)
        with no_grad_mode(model):
            return model(x, tau, ys)

    for k in range(k_steps):
        last = k == k_steps - 1
        h_k = sub(hs[k])
        v = call(state, sub(times[k]), last and keep_graph and not heun)
        if heun:  # the second evaluation at the step's end, from the Euler predictor
            with torch.no_grad():
                pred = kernels.adr_euler_step(state, v, h_k) if state.shape[0] > 0 else state
            v2 = call(pred, sub(times[k + 1]), last and keep_graph)
            acc = torch.promote_types(v.dtype, torch.float32)  # averaged in fp32 (fp64 stays fp64)
            v = 0.5 * (v.to(acc) + v2.to(acc))
        if not last and state.shape[0] > 0:
            with torch.no_grad():
                state = kernels.adr_euler_step(state, v, h_k)
    h = hs[-1]
    with torch.set_grad_enabled(keep_graph):
        if subset:  # scatter the rolled samples back into full-batch tensors for the fused last step
            state = x_s.index_copy(0, idx, state.to(x_s.dtype))
            v = torch.zeros_like(x_s, dtype=v.dtype).index_copy(0, idx, v)
        xhat, uhat, delta_x, _ = kernels.adr_euler_step(state, v, h, x0=x0, x1=x1, t=t)
        if subset:
            delta_x = delta_x * expand_t(rolled, delta_x).to(delta_x.dtype)
    return Rollout(s=s, rolled=rolled, xhat=xhat, uhat=uhat, delta_x=delta_x, idx=idx)


def rollout_metrics(r: Rollout, t: torch.Tensor) -> dict:
    """Training-time exposure bias and the time-pair statistics (detached 0-dim tensors)."""
    n = r.rolled.sum().clamp(min=1)  # a device tensor: no host read
    dx = r.delta_x.detach().float().pow(2).flatten(1).mean(1)                # ||delta_x||^2 / d per sample
    return {
        "delta_x_sq": (dx * r.rolled).sum() / n,
        "t_mean": t.mean(),
        "s_mean": r.s.mean(),
        "gap_mean": ((t - r.s) * r.rolled).sum() / n,
        "rolled_frac": r.rolled.float().mean(),
    }
