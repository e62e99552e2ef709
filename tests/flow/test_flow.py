import math

import pytest
import torch

from rfengine.flow import integrate, interpolate, sample_times, shift_time, time_grid, velocity, with_cfg


def test_interpolant_endpoints_and_velocity():
    x0, x1 = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    assert torch.equal(interpolate(x0, x1, torch.zeros(4)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(4)), x1)
    t = torch.rand(4)
    eps = 1e-3
    fd = (interpolate(x0, x1, t + eps) - interpolate(x0, x1, t - eps)) / (2 * eps)
    torch.testing.assert_close(fd, velocity(x0, x1), atol=2e-3, rtol=0)


def test_straight_line_identity():
    """(x1 - x_t)/(1 - t) equals u on the true path (docs/objectives.md section 1)."""
    x0, x1, t = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.rand(3, dtype=torch.float64) * 0.9
    xt = interpolate(x0, x1, t)
    torch.testing.assert_close((x1 - xt) / (1 - t).view(-1, 1, 1, 1), velocity(x0, x1))


def test_time_samplers_range_and_mean():
    u = sample_times(20000, "uniform")
    ln = sample_times(20000, "logit_normal", mean=0.0, std=1.0)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.02
    assert 0 < ln.min() and ln.max() < 1 and abs(ln.mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="kind"):
        sample_times(3, "beta")


def test_shift_identity_and_direction():
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] < t[1:-1]).all()  # more steps at high noise
    assert torch.equal(time_grid(4), torch.linspace(0, 1, 5, dtype=torch.float64))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_exact_on_constant_field(method):
    c = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    x0 = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    out = integrate(lambda x, t, y: c.expand_as(x), x0, None, steps=3, method=method)
    torch.testing.assert_close(out, x0 + c)


def test_heun_exact_on_linear_field_euler_not():
    """dx/dt = a + b*t integrates to x0 + a + b/2; Heun (trapezoid) is exact, Euler is not."""
    a, b = 0.7, -1.3
    x0 = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    field = lambda x, t, y: (a + b * t).view(-1, 1, 1, 1).expand_as(x)
    heun = integrate(field, x0, None, steps=4, method="heun", shift=2.0)
    euler = integrate(field, x0, None, steps=4, method="euler")
    assert math.isclose(heun.item(), a + b / 2, abs_tol=1e-12)
    assert abs(euler.item() - (a + b / 2)) > 1e-2


def test_cfg_combines_conditional_and_null():
    null = 10
    fn = lambda x, t, y: torch.where((y == null).view(-1, 1, 1, 1), torch.zeros_like(x), torch.ones_like(x))
    g = with_cfg(fn, 3.0, null)
    x = torch.randn(2, 1, 2, 2)
    v = g(x, torch.zeros(2), torch.tensor([1, 2]))
    torch.testing.assert_close(v, torch.full_like(x, 3.0))  # 0 + 3*(1 - 0)
    assert with_cfg(fn, 1.0, null) is fn
    with pytest.raises(ValueError, match="y"):
        g(x, torch.zeros(2), None)


def test_return_path_lengths():
    path = integrate(lambda x, t, y: torch.ones_like(x), torch.zeros(1, 1, 1, 1), None, steps=5, return_path=True)
    assert len(path) == 6 and path[-1].item() == pytest.approx(1.0)
