"""Parity with SiT's samplers, written from SiT's published definitions (transport/ and sample.py), not
copied: fixed-grid Euler over N + 1 grid points, the Euler-Maruyama SDE with its diffusion forms and
last step (step by step, on a recorded noise sequence), guidance on 3 channels as `forward_with_cfg`
applies it, a guidance interval, and adaptive dopri5 against a fine fixed-step solution."""
import math
import sys

import pytest
import torch

from rfengine.flow import diffusion_coefficient, integrate, score_from_velocity, with_cfg
from rfengine.models import build_model

NULL = 10


@pytest.fixture(scope="module")
def model():
    """A small random class-conditional DiT with a non-trivial field (adaLN-Zero would output 0), float64."""
    torch.manual_seed(3)
    m = build_model("DiT-T/4", in_channels=4, input_size=8, num_classes=10).double().eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


def batch(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def test_euler_equals_sits_fixed_grid_euler_over_n_plus_one_points(model):
    """SiT's ODE sampler with sampling_method=euler: torchdiffeq's fixed-grid Euler on linspace(0, 1, N + 1)."""
    odeint = pytest.importorskip("torchdiffeq").odeint
    x, y = batch()
    for n in (1, 4, 7):
        ours = integrate(model, x, y, steps=n, method="euler")
        t = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        sit = odeint(lambda ti, xi: model(xi, ti.expand(xi.shape[0]), y), x, t, method="euler")[-1]
        torch.testing.assert_close(ours, sit, rtol=1e-12, atol=1e-12)
        ref = x.clone()  # and the recursion itself
        for k in range(n):
            ref = ref + (t[k + 1] - t[k]) * model(ref, t[k].expand(3), y)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form, last", [("sigma", "mean"), ("linear", "euler"), ("constant", "none"),
                                        ("SBDM", "mean")])
def test_sde_follows_the_euler_maruyama_recursion_step_by_step(model, form, last):
    """On the linear path: s = (t v - x)/(1 - t); drift v + w s; x <- x + drift dt + sqrt(2 w) sqrt(dt) eps on
    linspace(t0, 1 - 0.04, N); then the last step. t0 = sample_eps for SBDM (its w is infinite at 0)."""
    x, y = batch(seed=1)
    n, size, eps0, norm = 6, 0.04, 1e-3 if form == "SBDM" else 0.0, 0.7
    noise = [torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + k), dtype=x.dtype) for k in range(n)]
    it = iter(noise)
    ours = integrate(model, x, y, steps=n, method="sde", diffusion=form, diffusion_norm=norm, last_step=last,
                     last_step_size=size, sample_eps=eps0, noise_fn=lambda like: next(it))
    t1 = 1 - size if last != "none" else 1 - eps0
    grid = torch.linspace(eps0, t1, n, dtype=torch.float64)
    dt = grid[1] - grid[0]

    def w(t):
        return {"sigma": norm * (1 - t), "linear": norm * (1 - t), "constant": norm * torch.ones_like(t),
                "SBDM": norm * (1 - t) / t}[form]

    def drift(xx, t):
        tb = torch.full((3,), float(t), dtype=torch.float64)
        v = model(xx, tb, y)
        s = (tb.view(-1, 1, 1, 1) * v - xx) / (1 - tb.view(-1, 1, 1, 1))
        return v, v + w(tb).view(-1, 1, 1, 1) * s

    ref = x.clone()
    for k in range(n - 1):
        tb = torch.full((3,), float(grid[k]), dtype=torch.float64)
        _, d = drift(ref, grid[k])
        ref = ref + d * dt + torch.sqrt(2 * w(tb)).view(-1, 1, 1, 1) * noise[k] * torch.sqrt(dt)
    if last != "none":
        v, d = drift(ref, grid[-1])
        ref = ref + (d if last == "mean" else v) * size
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_sde_noise_contract_one_randn_per_stochastic_step_from_the_generator(model):
    x, y = batch(seed=2)
    a = integrate(model, x, y, steps=5, method="sde", generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    drawn = [torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device) for _ in range(4)]
    it = iter(drawn)
    b = integrate(model, x, y, steps=5, method="sde", noise_fn=lambda like: next(it))
    assert torch.equal(a, b)
    assert torch.equal(a, integrate(model, x, y, steps=5, method="sde", generator=torch.Generator().manual_seed(9)))


def test_sde_pieces_and_bad_settings():
    t = torch.tensor([0.25, 0.5])
    x, v = torch.ones(2, 1, 1, 1), torch.full((2, 1, 1, 1), 2.0)
    torch.testing.assert_close(score_from_velocity(v, x, t).flatten(), torch.tensor([(0.5 - 1) / 0.75, 0.0]))
    torch.testing.assert_close(diffusion_coefficient(t, "SBDM", 2.0), torch.tensor([2 * 0.75 / 0.25, 2.0]))
    torch.testing.assert_close(diffusion_coefficient(t, "sigma", 1.0), torch.tensor([0.75, 0.5]))
    with pytest.raises(ValueError, match="SBDM.*sample_eps > 0"):
        integrate(lambda a, b, c: a, x, None, steps=4, method="sde", diffusion="SBDM")
    with pytest.raises(ValueError, match="last_step_size: expected > 0"):
        integrate(lambda a, b, c: a, x, None, steps=4, method="sde", last_step_size=0.0)
    with pytest.raises(ValueError, match="method: expected one of"):
        integrate(lambda a, b, c: a, x, None, steps=4, method="rk4")


def test_guidance_on_three_channels_is_sits_forward_with_cfg(model):
    """SiT/DiT: the model runs on [x; x] with [y; null]; eps = out[:, :3] is guided, rest = out[:, 3:] is kept,
    and the first half (the conditional one) is the sample's velocity."""
    x, y = batch(seed=4)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    ours = with_cfg(model, 4.0, NULL, channels=3)(x, t, y)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, NULL)]))
    eps, rest = out[:, :3], out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + 4.0 * (cond_eps - uncond_eps)
    sit = torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)[:3]
    torch.testing.assert_close(ours, sit, rtol=0, atol=0)
    cond = model(x, t, y)
    torch.testing.assert_close(ours[:, 3:], cond[:, 3:], rtol=1e-12, atol=1e-12)  # (a batch of 6 vs 3: ulps)
    assert not torch.allclose(ours[:, :3], cond[:, :3])
    full = with_cfg(model, 4.0, NULL)(x, t, y)  # every channel guided (rfengine's default)
    torch.testing.assert_close(full[:, :3], ours[:, :3])
    assert not torch.allclose(full[:, 3:], ours[:, 3:])


def test_guidance_interval_uses_one_model_call_outside_it(model):
    x, y = batch(seed=5)
    calls = []

    def counted(xx, t, yy):
        calls.append((xx.shape[0], float(t[0])))
        return model(xx, t, yy)

    out = integrate(with_cfg(counted, 2.0, NULL, interval=(0.25, 0.5)), x, y, steps=4, method="euler")
    assert calls == [(3, 0.0), (6, 0.25), (6, 0.5), (3, 0.75)]
    ref = x.clone()
    for k, (tk, guided) in enumerate([(0.0, False), (0.25, True), (0.5, True), (0.75, False)]):
        tb = torch.full((3,), tk, dtype=torch.float64)
        v = with_cfg(model, 2.0, NULL)(ref, tb, y) if guided else model(ref, tb, y)
        ref = ref + 0.25 * v
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cfg_interval"):
        with_cfg(model, 2.0, NULL, interval=(0.6, 0.2))


def test_dopri5_agrees_with_a_fine_fixed_step_solution(model):
    pytest.importorskip("torchdiffeq")
    x, y = batch(seed=6)
    stats = {}
    ours = integrate(model, x, y, method="dopri5", atol=1e-6, rtol=1e-3, stats=stats)
    fine = integrate(model, x, y, steps=400, method="heun")
    err = (ours - fine).abs().max().item()
    assert err <= 10 * (1e-6 + 1e-3 * fine.abs().max().item()), err
    assert stats["nfe"] >= 6 and stats["nfe"] % 6 in (0, 1, 2)  # dopri5: 6 evaluations an accepted step (+ start)
    tight = integrate(model, x, y, method="dopri5", atol=1e-9, rtol=1e-7)
    assert (tight - fine).abs().max().item() < err + 1e-6


def test_dopri5_without_torchdiffeq_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    with pytest.raises(ImportError, match="pip install torchdiffeq"):
        integrate(lambda a, b, c: a, torch.zeros(1, 1, 2, 2), None, method="dopri5")


def test_heun_and_euler_unchanged_on_a_linear_field():
    """dx/dt = -x: Euler is (1 - h)^N, Heun (1 - h + h^2/2)^N."""
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    f = lambda a, t, y: -a  # noqa: E731
    assert integrate(f, x, None, steps=4, method="euler").item() == pytest.approx(0.75 ** 4)
    assert integrate(f, x, None, steps=4, method="heun").item() == pytest.approx((1 - 0.25 + 0.25 ** 2 / 2) ** 4)
    assert math.isclose(integrate(f, x, None, steps=4, method="euler").item(), 0.75 ** 4)


# ---------------------------------------------------------------------------------------------
# Few-call samplers: DPM-Solver++(2M) and two-step Adams-Bashforth
# ---------------------------------------------------------------------------------------------

def gaussian_field(m=0.7, s=0.3):
    """The exact velocity of the linear path for data N(m, s^2): its ODE carries x0 to m + s*x0."""
    def v(x, t, y):
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        std = torch.sqrt(tt ** 2 * s ** 2 + (1 - tt) ** 2)
        return m + (tt * s ** 2 - (1 - tt)) / std * (x - tt * m) / std
    return v, lambda x0: m + s * x0


def dpmpp2m_as_published(fn, x, n, shift):
    """DPM-Solver++(2M) in the paper's own variables (alpha_t = t, sigma_t = 1 - t, lambda = log(alpha/sigma),
    data prediction D = x + (1 - t) v), Algorithm 2 with first-order first and last steps."""
    from rfengine.flow import time_grid
    lam = lambda t: -math.inf if t <= 0 else (math.inf if t >= 1 else math.log(t / (1 - t)))  # noqa: E731
    ts, d_prev, h_prev = time_grid(n, shift).tolist(), None, None
    for a, b in zip(ts[:-1], ts[1:]):
        d = x + (1 - a) * fn(x, torch.full((x.shape[0],), a, dtype=x.dtype), None)
        h = lam(b) - lam(a)
        if d_prev is None or b >= 1:
            d_eff = d
        else:
            r = h_prev / h
            d_eff = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        x = ((1 - b) / (1 - a)) * x - b * math.expm1(-h) * d_eff
        d_prev, h_prev = d, h
    return x


@pytest.mark.parametrize("shift", [1.0, 0.5, 3.0])
def test_dpmpp2m_follows_the_published_recursion(model, shift):
    x, y = batch()
    fn = lambda x_, t_, _: model(x_, t_, y)  # noqa: E731
    for n in (2, 4, 7):
        ours = integrate(model, x, y, steps=n, method="dpmpp2m", shift=shift)
        torch.testing.assert_close(ours, dpmpp2m_as_published(fn, x, n, shift), rtol=1e-11, atol=1e-11)
    # first-order on the first, second (infinite lambda interval before it) and last step: Euler up to 3 steps
    for n in (1, 2, 3):
        torch.testing.assert_close(integrate(model, x, y, steps=n, method="dpmpp2m", shift=shift),
                                   integrate(model, x, y, steps=n, method="euler", shift=shift), rtol=1e-11, atol=1e-11)
    assert not torch.allclose(integrate(model, x, y, steps=5, method="dpmpp2m"),
                              integrate(model, x, y, steps=5, method="euler"), rtol=1e-6, atol=1e-6)


def test_ab2_follows_the_variable_step_adams_bashforth_recursion(model):
    from rfengine.flow import time_grid
    x, y = batch()
    ts = time_grid(6, 2.0).tolist()
    ref, v_prev, h_prev = x.clone(), None, None
    for a, b in zip(ts[:-1], ts[1:]):
        v = model(ref, torch.full((3,), a, dtype=x.dtype), y)
        h = b - a
        ref = ref + h * (v if v_prev is None else (1 + h / (2 * h_prev)) * v - h / (2 * h_prev) * v_prev)
        v_prev, h_prev = v, h
    torch.testing.assert_close(integrate(model, x, y, steps=6, method="ab2", shift=2.0), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("ab2", 2)])
@pytest.mark.parametrize("shift", [1.0, 2.0])
def test_fixed_grid_samplers_converge_at_their_order(method, order, shift):
    """On the exact field of Gaussian data, the endpoint error falls by about 2^order per halving of the step."""
    v, exact = gaussian_field()
    x0 = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    err = [(integrate(v, x0, None, steps=n, method=method, shift=shift) - exact(x0)).abs().max().item()
           for n in (32, 64, 128)]
    rates = [math.log2(err[i] / err[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.35 for r in rates), rates


def test_few_call_samplers_report_their_model_calls(model):
    x, y = batch()
    for method, calls in (("euler", 4), ("heun", 8), ("dpmpp2m", 4), ("ab2", 4)):
        st = {}
        integrate(model, x, y, steps=4, method=method, stats=st)
        assert st["nfe"] == calls
