"""The rollout matched to a sampler (`adr.integrator`, `adr.infer_steps`, `adr.shift`): against a hand
computation, against the sampler itself on its own grid, the fused last step against the reference, the
planner's count of the extra forward, and the config's refusal of a shift the pairing cannot follow."""
import pytest
import torch

from rfengine import config
from rfengine.flow import integrate, interpolate, shift_time, time_grid, unshift_time
from rfengine.objectives.rollout import pair_times, rollout, step_times


def adr_cfg(**adr):
    return config.from_dict({"objective": {"name": "reflexflow", "adr": adr}}).objective.adr


def field(x, t, y):
    """A velocity field that depends on x and t non-linearly (float64): Heun differs from Euler."""
    tt = t.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.sin(x) * (1 + tt) - 0.5 * x * tt ** 2


def data(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 2, 4, 3, generator=g, dtype=torch.float64)
    x1 = torch.randn(b, 2, 4, 3, generator=g, dtype=torch.float64)
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return x0, x1, t


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("k", [1, 2])
def test_heun_rollout_equals_the_hand_computation(shift, k):
    """s = shift(max(g(t) - K/N, 0)); K Heun steps through the grid points in between; uhat, delta_x from xhat."""
    x0, x1, t = data()
    n = 4
    adr = adr_cfg(integrator="heun", infer_steps=n, steps=k, shift=shift)
    r = rollout(field, x0, x1, None, t, adr)
    for i in range(t.shape[0]):  # one sample at a time, in plain float arithmetic on the times
        ti = float(t[i])
        g = lambda u: 1 - (1 - u) / (shift - (shift - 1) * (1 - u))  # noqa: E731  (shift^-1, by hand)
        f = lambda u: 1 - shift * (1 - u) / (1 + (shift - 1) * (1 - u))  # noqa: E731
        ua = max(g(ti) - k / n, 0.0)
        taus = [f(ua + j * (g(ti) - ua) / k) for j in range(k + 1)]
        taus[0], taus[-1] = f(ua), ti
        x = interpolate(x0[i:i + 1], x1[i:i + 1], torch.tensor([taus[0]], dtype=torch.float64))
        for a, b in zip(taus[:-1], taus[1:]):
            v1 = field(x, torch.tensor([a], dtype=torch.float64), None)
            v2 = field(x + (b - a) * v1, torch.tensor([b], dtype=torch.float64), None)
            x = x + (b - a) * (v1 + v2) / 2
        x_t = ti * x1[i] + (1 - ti) * x0[i]
        torch.testing.assert_close(r.s[i].item(), taus[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r.xhat[i], x[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(r.delta_x[i], x[0] - x_t, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(r.uhat[i], (x1[i] - x[0]) / max(1 - ti, 1e-3), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 0.5, 3.0])
def test_rollout_from_noise_follows_the_sampler_on_its_grid(method, shift):
    """t on the sampler's j-th grid point and K = j: the rollout starts from pure noise at s = 0 and goes
    through the sampler's own grid points, so xhat is the sampler's j-th state."""
    x0, x1, _ = data(b=3)
    n, j = 5, 3
    t_j = float(time_grid(n, shift)[j])
    t = torch.full((3,), t_j, dtype=torch.float64)
    adr = adr_cfg(integrator=method, infer_steps=n, steps=j, shift=shift)
    r = rollout(field, x0, x1, None, t, adr)
    path = integrate(field, x0, None, steps=n, method=method, shift=shift, return_path=True)
    torch.testing.assert_close(r.s, torch.zeros_like(t), rtol=0, atol=1e-12)
    torch.testing.assert_close(r.xhat, path[j], rtol=1e-10, atol=1e-10)
    taus, _ = step_times(r.s, t, adr)
    torch.testing.assert_close(torch.stack(taus)[:, 0], time_grid(n, shift)[: j + 1], rtol=0, atol=1e-12)


def test_defaults_are_the_euler_rollout_bit_for_bit():
    """integrator euler and shift 1 keep section 3's rollout: s = max(t - K/N, 0), K equal Euler steps."""
    x0, x1, t = data()
    adr = adr_cfg(steps=2, infer_steps=10)
    r = rollout(field, x0, x1, None, t, adr)
    s = torch.clamp(t - 2 / 10, min=0.0)
    h = (t - s) / 2
    x = interpolate(x0, x1, s)
    x = x + h.reshape(-1, 1, 1, 1) * field(x, s, None)
    x = x + h.reshape(-1, 1, 1, 1) * field(x, s + h, None)
    assert torch.equal(r.s, s)
    torch.testing.assert_close(r.xhat, x, rtol=0, atol=1e-15)


def test_shifted_start_is_k_grid_steps_back_in_unshifted_time():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    adr = adr_cfg(infer_steps=6, steps=1, shift=3.0)
    s, _, _ = pair_times(t, adr)
    want = shift_time(torch.clamp(unshift_time(t, 3.0) - 1 / 6, min=0.0), 3.0)
    torch.testing.assert_close(s, want, rtol=0, atol=1e-15)
    assert (s < t).all() and (s >= 0).all()
    assert not torch.allclose(s, torch.clamp(t - 1 / 6, min=0.0))  # the shift moves the start


@pytest.mark.parametrize("prob", [1.0, 0.5])
def test_heun_rollout_trains_through_the_second_evaluation(prob):
    """grad_through_rollout with Heun: the graph is the last step's second call (v2); only rolled rows carry it."""
    torch.manual_seed(0)
    lin = torch.nn.Conv2d(2, 2, 1).double()
    model = lambda x, t, y: lin(x) * (1 + t.reshape(-1, 1, 1, 1))  # noqa: E731
    x0, x1, t = data(b=4)
    adr = adr_cfg(integrator="heun", infer_steps=4, prob=prob, grad_through_rollout=True)
    r = rollout(model, x0, x1, None, t, adr, keep_graph=True)
    assert r.xhat.requires_grad
    r.xhat[r.rolled].sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_fused_last_step_agrees_with_the_reference_for_heun(monkeypatch):
    """The kernel contract is unchanged: the Triton op (interpreter on CPU) takes Heun's effective velocity."""
    pytest.importorskip("triton")
    x0, x1, t = (a.float() for a in data(b=3))
    adr = adr_cfg(integrator="heun", infer_steps=3, steps=2, shift=2.0)
    out = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("RFENGINE_KERNELS", backend)
        out[backend] = rollout(field, x0, x1, None, t, adr)
    for name in ("xhat", "uhat", "delta_x"):
        torch.testing.assert_close(getattr(out["triton"], name), getattr(out["reference"], name), rtol=1e-5, atol=1e-5)


def test_shift_needs_grid_pairing():
    with pytest.raises(config.ConfigError, match="objective.adr.shift"):
        config.from_dict({"objective": {"name": "reflexflow", "adr": {"pairing": "uniform", "shift": 2.0}}})
    with pytest.raises(config.ConfigError, match="integrator"):
        config.from_dict({"objective": {"name": "reflexflow", "adr": {"integrator": "rk4"}}})


def test_planner_counts_heuns_extra_forward():
    """The FLOP floor (model rows run per step): a Heun rollout step is one more no-grad forward of the
    batch's 8 rows than an Euler one."""
    from rfengine.plan import step_memory
    units = {}
    for integ in ("euler", "heun"):
        cfg = config.load(None, ["model.arch=DiT-T/2", "data.name=digits", "model.class_conditional=false",
                                 "objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                                 f"objective.adr.integrator={integ}"])
        units[integ] = step_memory(cfg, 8).forward_units
    assert units["heun"] == units["euler"] + 8
