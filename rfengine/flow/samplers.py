"""Samplers for the velocity field, integrating forward in t from noise (t = 0) to data (t = 1):
Euler, Heun, DPM-Solver++(2M) and two-step Adams-Bashforth on a (shifted) uniform grid, SiT's SDE sampler (Euler-Maruyama with a diffusion
coefficient and a last step), the adaptive dopri5 ODE solver (torchdiffeq, optional), and
classifier-free guidance as DiT/SiT apply it (optionally on the first channels only, optionally only
inside a time interval).

SDE (SiT's convention for the linear path and a velocity model; SiT: transport/, sample.py --SDE):
  score     s(x, t) = (t*v - x) / (1 - t)
  drift     v + w(t)*s,  noise sqrt(2*w(t)) dW
  w(t)      `sigma`: norm*(1 - t) (SiT's default); `linear`: norm*(1 - t); `constant`: norm;
            `SBDM`: norm*(1 - t)/t (infinite at t = 0: it starts at `sample_eps` > 0, as SiT does)
  grid      `steps` points from t0 (0, or sample_eps for SBDM) to 1 - last_step_size: steps - 1
            Euler-Maruyama steps, then the last step (`mean`: x + drift*last_step_size, no noise;
            `euler`: x + v*last_step_size; `none`), so `steps` counts model evaluations as SiT's
            --num-sampling-steps does.
  noise     one torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) per
            stochastic step, in step order (a documented contract: the same seed gives the same samples).

DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2: multistep, second order, data prediction)
on the linear path, alpha_t = t, sigma_t = 1 - t, lambda_t = log(t/(1 - t)), one model call per step.
The data prediction is D = x + (1 - t) v. Its first-order step (DDIM) on this path is exactly the Euler
step x + (t' - t) v; the second-order step replaces D by D + (D - D_prev)/(2r), r = h_prev/h in lambda,
which in velocity form is
  x' = x + (t' - t) * (v + (D - D_prev) / (2 r (1 - t))).
As in the paper (and k-diffusion's `sample_dpmpp_2m`), the first step has no previous prediction and the
last step (to t = 1, lambda = +inf) is first order; the second step's r is infinite (lambda = -inf at
t = 0), so its correction vanishes: the correction acts from the third of `steps` steps on (with 3 steps
or fewer it is Euler).

Two-step Adams-Bashforth (`ab2`; the variable-step form, as DEIS/iPNDM use it in t for few-step sampling),
one model call per step, first step Euler:
  x' = x + h * ((1 + h/(2 h_prev)) v - h/(2 h_prev) v_prev).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from rfengine.flow.path import expand_t, shift_time

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
METHODS = ("euler", "heun", "dpmpp2m", "ab2", "sde", "dopri5")
FIXED_GRID = ("euler", "heun", "dpmpp2m", "ab2")
CALLS_PER_STEP = {"euler": 1, "heun": 2, "dpmpp2m": 1, "ab2": 1}
DIFFUSIONS = ("sigma", "SBDM", "constant", "linear")
LAST_STEPS = ("mean", "euler", "none")


def time_grid(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """steps + 1 times from 0 to 1 (uniform, then shifted)."""
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    return shift_time(torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=torch.float64), shift)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------

@dataclass
class Guided:
    """Classifier-free guidance v = v_null + scale*(v_cond - v_null), both in one batched call, on the
    first `channels` channels (None: all; DiT/SiT's published numbers guide 3 of the 4 latent channels
    and leave the others conditional), and only for times in `interval` [t_lo, t_hi] (None: always);
    outside it the conditional velocity alone is used, with one model call instead of two."""
    fn: VelocityFn
    scale: float
    null_class: int
    channels: int | None = None
    interval: tuple[float, float] | None = None

    def active(self, t: float) -> bool:
        return self.interval is None or self.interval[0] <= t <= self.interval[1]

    def at(self, t: float) -> VelocityFn:
        """The velocity function for a step at time t (a host float: choosing reads nothing from the device)."""
        return self if self.active(t) else self.fn

    def __call__(self, x, t, y):
        if y is None:
            raise ValueError("y: classifier-free guidance needs class labels, got None")
        v = self.fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_class)]))
        v_cond, v_null = v.chunk(2)
        guided = v_null + self.scale * (v_cond - v_null)
        if self.channels is None or self.channels >= v.shape[1]:
            return guided
        return torch.cat([guided[:, : self.channels], v_cond[:, self.channels:]], dim=1)


def with_cfg(fn: VelocityFn, scale: float, null_class: int, channels: int | None = None,
             interval: tuple[float, float] | None = None) -> VelocityFn:
    """`fn` with classifier-free guidance (`Guided`); scale = 1 returns `fn` unchanged (no extra compute)."""
    if scale == 1.0:
        return fn
    if channels is not None and channels < 1:
        raise ValueError(f"cfg_channels: expected >= 1 (or None for every channel), got {channels}")
    if interval is not None:
        lo, hi = (float(v) for v in interval)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"cfg_interval: expected 0 <= t_lo <= t_hi <= 1, got {list(interval)}")
        interval = (lo, hi)
    return Guided(fn, scale, null_class, channels, interval)


def _at(fn: VelocityFn, t: float) -> VelocityFn:
    return fn.at(t) if isinstance(fn, Guided) else fn


# ---------------------------------------------------------------------------------------------
# SDE pieces (SiT's linear path, velocity model)
# ---------------------------------------------------------------------------------------------

def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s(x, t) = (t*v - x)/(1 - t) on the linear path (x: (B, ...), t: (B,))."""
    tt = expand_t(t, x)
    return (tt * v - x) / (1 - tt)


def diffusion_coefficient(t: torch.Tensor, form: str = "sigma", norm: float = 1.0) -> torch.Tensor:
    """w(t) of SiT's `compute_diffusion` for the linear path (alpha = t, sigma = 1 - t)."""
    if form == "sigma" or form == "linear":
        return norm * (1 - t)
    if form == "constant":
        return torch.full_like(t, norm)
    if form == "SBDM":  # norm * (d alpha/alpha * sigma^2 - sigma * d sigma) = norm * (1 - t)/t
        return norm * (1 - t) / t
    raise ValueError(f"diffusion: expected one of {', '.join(DIFFUSIONS)}, got {form!r}")


def sde_grid(steps: int, diffusion: str, last_step: str, last_step_size: float, sample_eps: float) -> torch.Tensor:
    """The `steps` grid points (float64) of SiT's SDE sampler: t0 (0, or sample_eps for SBDM) to t1 =
    1 - last_step_size (1 - sample_eps without a last step)."""
    if steps < 2:
        raise ValueError(f"steps: the SDE sampler needs >= 2 (steps - 1 stochastic steps and the last), got {steps}")
    if last_step not in LAST_STEPS:
        raise ValueError(f"last_step: expected one of {', '.join(LAST_STEPS)}, got {last_step!r}")
    if diffusion == "SBDM" and sample_eps <= 0:
        raise ValueError("diffusion 'SBDM': w(t) = (1 - t)/t is infinite at t = 0; pass sample_eps > 0 (SiT: --sample-eps)")
    if last_step != "none" and last_step_size <= 0:
        raise ValueError(f"last_step_size: expected > 0 for last_step {last_step!r} (the score is infinite at t = 1), "
                         f"got {last_step_size}")
    t0 = sample_eps if diffusion == "SBDM" else 0.0
    t1 = 1.0 - (last_step_size if last_step != "none" else sample_eps)
    if not t0 < t1:
        raise ValueError(f"the SDE grid is empty: t0 {t0} >= t1 {t1}")
    return torch.linspace(t0, t1, steps, dtype=torch.float64)


def _sde(fn: VelocityFn, x: torch.Tensor, y, *, steps: int, generator, diffusion: str, diffusion_norm: float,
         last_step: str, last_step_size: float, sample_eps: float, noise_fn=None):
    grid = sde_grid(steps, diffusion, last_step, last_step_size, sample_eps)
    times = grid.tolist()
    dt = times[1] - times[0]
    b = x.shape[0]

    def drift(x, t: float):
        tb = torch.full((b,), t, dtype=x.dtype, device=x.device)
        v = _at(fn, t)(x, tb, y).to(x.dtype)
        w = diffusion_coefficient(tb, diffusion, diffusion_norm)
        return v, v + expand_t(w, x) * score_from_velocity(v, x, tb), w

    for t in times[:-1]:  # steps - 1 Euler-Maruyama steps
        _, d, w = drift(x, t)
        eps = noise_fn(x) if noise_fn is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                                   device=x.device)
        x = x + d * dt + torch.sqrt(2 * expand_t(w, x)) * eps * math.sqrt(dt)
    if last_step == "none":
        return x
    v, d, _ = drift(x, times[-1])
    return x + (d if last_step == "mean" else v) * last_step_size


# ---------------------------------------------------------------------------------------------
# Adaptive ODE (dopri5, torchdiffeq)
# ---------------------------------------------------------------------------------------------

def _dopri5(fn: VelocityFn, x: torch.Tensor, y, *, atol: float, rtol: float, stats: dict | None):
    try:
        from torchdiffeq import odeint
    except ImportError:
        raise ImportError("method 'dopri5' needs torchdiffeq, an optional dependency: pip install torchdiffeq "
                          "(or pip install -e '.[sample]')") from None
    b, calls = x.shape[0], [0]

    def f(t, state):
        calls[0] += 1
        tb = t.to(state.dtype).expand(b)
        return _at(fn, float(t))(state, tb, y).to(state.dtype)

    t = torch.tensor([0.0, 1.0], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device)
    out = odeint(f, x, t, method="dopri5", atol=atol, rtol=rtol)[-1]
    if stats is not None:
        stats["nfe"] = calls[0]
    return out


@torch.no_grad()
def integrate(fn: VelocityFn, x: torch.Tensor, y: torch.Tensor | None, *, steps: int = 50,
              method: str = "euler", shift: float = 1.0, return_path: bool = False,
              generator: torch.Generator | None = None, diffusion: str = "sigma", diffusion_norm: float = 1.0,
              last_step: str = "mean", last_step_size: float = 0.04, sample_eps: float = 0.0,
              atol: float = 1e-6, rtol: float = 1e-3, stats: dict | None = None, noise_fn=None):
    """Integrate from noise x (B, ...) at t = 0 to t = 1 with `fn(x, t, y)`.

    euler / heun / dpmpp2m / ab2: `steps` steps on the (shifted) uniform grid (model calls: `steps`, except
    2*steps for heun); with `return_path` the steps + 1 states.
    sde: SiT's Euler-Maruyama sampler (module docstring), noise from `generator`; `steps` model calls.
    dopri5: adaptive Runge-Kutta 4(5) (torchdiffeq) with `atol`/`rtol` (SiT's defaults 1e-6/1e-3);
    the number of function evaluations goes to `stats["nfe"]`.
    `noise_fn(x)` replaces the SDE's noise draws (for parity tests against a recorded sequence).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method == "sde":
        if return_path:
            raise ValueError("return_path: only for the fixed-grid samplers (euler, heun, dpmpp2m, ab2)")
        return _sde(fn, x, y, steps=steps, generator=generator, diffusion=diffusion, diffusion_norm=diffusion_norm,
                    last_step=last_step, last_step_size=last_step_size, sample_eps=sample_eps, noise_fn=noise_fn)
    if method == "dopri5":
        if return_path:
            raise ValueError("return_path: only for the fixed-grid samplers (euler, heun, dpmpp2m, ab2)")
        return _dopri5(fn, x, y, atol=atol, rtol=rtol, stats=stats)
    times = time_grid(steps, shift).tolist()
    path = [x]
    b = x.shape[0]
    prev = None  # the multistep samplers' memory of the step before

    def vel(x, t: float):
        return _at(fn, t)(x, torch.full((b,), t, dtype=x.dtype, device=x.device), y).to(x.dtype)

    for i in range(steps):
        t0, t1 = times[i], times[i + 1]
        h = t1 - t0
        v0 = vel(x, t0)
        if method == "euler":
            x = x + h * v0
        elif method == "heun":
            v1 = vel(x + h * v0, t1)
            x = x + h * 0.5 * (v0 + v1)
        elif method == "ab2":
            v_eff = v0 if prev is None else v0 + (h / (2 * prev[1])) * (v0 - prev[0])
            x, prev = x + h * v_eff, (v0, h)
        else:
            x, prev = _dpmpp2m_step(x, v0, t0, t1, prev)
        if return_path:
            path.append(x)
    if stats is not None:
        stats["nfe"] = steps * CALLS_PER_STEP[method]
    return path if return_path else x


def _lam(t: float) -> float:
    """lambda = log(alpha/sigma) = log(t/(1 - t)) on the linear path; -inf at t = 0, +inf at t = 1."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t / (1.0 - t))


def _dpmpp2m_step(x: torch.Tensor, v: torch.Tensor, t0: float, t1: float, prev):
    """One DPM-Solver++(2M) step from t0 to t1 (module docstring) given v = v(x, t0) and `prev` = (D_prev,
    h_prev) of the step before (None on the first); returns the new state and this step's (D, h)."""
    d = x + (1.0 - t0) * v  # the data prediction at t0
    lam_h = _lam(t1) - _lam(t0)
    v_eff = v
    if prev is not None and t1 < 1.0 and math.isfinite(prev[1]):  # first order on the first and the last step
        r = prev[1] / lam_h
        v_eff = v + (d - prev[0]) / (2.0 * r * (1.0 - t0))
    return x + (t1 - t0) * v_eff, (d, lam_h)
