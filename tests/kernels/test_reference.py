"""The reference ops against an independent float64 numpy reading of docs/objectives.md sections 3 and 5, plus
the properties that pin the math, gradients and input errors."""
import numpy as np
import pytest
import torch

from kernels import reference as R
from tests.kernels.inputs import SHAPES, adr_loss_inputs, adr_step_inputs, fc_inputs

MASKS = ["circle", "box", "gaussian"]


# ---------------------------------------------------------------------------------------------
# An independent reading in numpy (float64)
# ---------------------------------------------------------------------------------------------

def np_mask(h, w, mask, cutoff):
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    c = cutoff / 2
    if mask == "circle":
        return (np.hypot(fy, fx) <= c).astype(np.float64)
    if mask == "box":
        return ((np.abs(fy) <= c) & (np.abs(fx) <= c)).astype(np.float64)
    return np.exp(-(fy ** 2 + fx ** 2) / (2 * c ** 2))


def np_fc_loss(pred, target, delta, mask, cutoff, alpha, t, t_max):
    out = np.empty(pred.shape[0])
    m = np_mask(pred.shape[2], pred.shape[3], mask, cutoff)
    for b in range(pred.shape[0]):
        lp = np.stack([np.real(np.fft.ifft2(np.fft.fft2(delta[b, c]) * m)) for c in range(pred.shape[1])])
        w = 1 + alpha * np.abs(lp) / (np.abs(lp).mean() + 1e-8)
        if t is not None and t[b] > t_max:
            w = np.ones_like(w)
        out[b] = (w * (pred[b] - target[b]) ** 2).mean()
    return out


def np_adr_step(xhat, v, h, x0, x1, t):
    xn = xhat + h[:, None, None, None] * v
    tt = t[:, None, None, None]
    uhat = (x1 - xn) / np.maximum(1 - tt, 1e-3)
    delta = xn - (tt * x1 + (1 - tt) * x0)
    return xn, uhat, delta, (uhat ** 2).reshape(len(t), -1).sum(1)


def np_adr_loss(v, u, t, kind):
    v, u = v.reshape(len(t), -1), u.reshape(len(t), -1)
    if kind == "direction":
        vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)
        un = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-6)
        return ((vn - un) ** 2).sum(1)
    per = ((v - u) ** 2).mean(1)
    return per * np.maximum(1 - t, 1e-3) ** 2 if kind == "x1" else per


def n(x):
    return x.detach().double().numpy()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("cutoff", [0.25, 0.6])
def test_fc_matches_numpy(shape, mask, cutoff):
    pred, target, delta, t = fc_inputs(shape, torch.float64)
    got = R.fc_weighted_mse(pred, target, delta, mask=mask, cutoff=cutoff, alpha=1.3, t=t, t_max=0.7,
                            reduction="none")
    want = np_fc_loss(n(pred), n(target), n(delta), mask, cutoff, 1.3, n(t), 0.7)
    np.testing.assert_allclose(n(got), want, rtol=1e-12, atol=1e-14)
    mean = R.fc_weighted_mse(pred, target, delta, mask=mask, cutoff=cutoff, alpha=1.3, t=t, t_max=0.7)
    np.testing.assert_allclose(mean.item(), want.mean(), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_adr_step_matches_numpy(shape):
    xhat, v, h, x0, x1, t = adr_step_inputs(shape, torch.float64)
    got = R.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t)
    want = np_adr_step(n(xhat), n(v), n(h), n(x0), n(x1), n(t))
    for g, w in zip(got, want):
        np.testing.assert_allclose(n(g), w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(n(R.adr_euler_step(xhat, v, h)), want[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("kind", ["x1", "mse", "direction"])
def test_adr_loss_matches_numpy(shape, kind):
    v, u, t = adr_loss_inputs(shape, torch.float64)
    t[0] = 1.0  # the eps_t floor
    got = R.adr_loss(v, u, t, kind=kind, reduction="none")
    np.testing.assert_allclose(n(got), np_adr_loss(n(v), n(u), n(t), kind), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Properties of the math
# ---------------------------------------------------------------------------------------------

def test_on_path_rollout_gives_u_and_zero_bias():
    _, v, _, x0, x1, t = adr_step_inputs((3, 2, 7, 5), torch.float64)
    t = t.clamp(max=0.99)
    xt = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0
    xn, uhat, delta, sq = R.adr_euler_step(xt, v, torch.zeros(3, dtype=torch.float64), x0=x0, x1=x1, t=t)
    torch.testing.assert_close(xn, xt, rtol=0, atol=0)
    torch.testing.assert_close(uhat, x1 - x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=1e-15)
    torch.testing.assert_close(sq, (x1 - x0).pow(2).flatten(1).sum(1), rtol=1e-12, atol=0)


def test_alpha_zero_is_plain_mse():
    pred, target, delta, t = fc_inputs((3, 4, 17, 23))
    got = R.fc_weighted_mse(pred, target, delta, alpha=0.0, t=t)
    torch.testing.assert_close(got, torch.nn.functional.mse_loss(pred, target), rtol=1e-6, atol=0)


def test_t_max_switches_weight_off():
    pred, target, delta, _ = fc_inputs((2, 1, 8, 8), torch.float64)
    t = torch.tensor([0.2, 0.9], dtype=torch.float64)
    per = R.fc_weighted_mse(pred, target, delta, t=t, t_max=0.5, reduction="none")
    plain = (pred - target).pow(2).flatten(1).mean(1)
    assert per[0] != plain[0]
    torch.testing.assert_close(per[1], plain[1])


def test_direction_loss_parallel_zero_opposite_four():
    v = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    t = torch.rand(3, dtype=torch.float64)
    torch.testing.assert_close(R.adr_loss(v, 2.5 * v, t, kind="direction", reduction="none"),
                               torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(R.adr_loss(v, -0.5 * v, t, kind="direction", reduction="none"),
                               torch.full((3,), 4.0, dtype=torch.float64), atol=1e-12, rtol=0)


def test_x1_loss_is_one_minus_t_squared_times_mse():
    v, u, t = adr_loss_inputs((4, 3, 6, 7), torch.float64)
    x1 = R.adr_loss(v, u, t, kind="x1", reduction="none")
    mse = R.adr_loss(v, u, t, kind="mse", reduction="none")
    torch.testing.assert_close(x1, (1 - t) ** 2 * mse)


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 1, 5, 7), (2, 2, 16, 16)])
def test_box_mask_with_cutoff_two_is_identity(shape):
    d = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(R.fc_lowpass(d, "box", 2.0), d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(R.fc_lowpass(d, "box", 3.5), d, rtol=1e-12, atol=1e-12)


def test_lowpass_keeps_constant_and_removes_nyquist():
    const = torch.full((1, 1, 8, 8), 2.0, dtype=torch.float64)
    for mask in MASKS:
        torch.testing.assert_close(R.fc_lowpass(const, mask, 0.25), const)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]).remainder(2).double().mul(2).sub(1)[None, None]
    torch.testing.assert_close(R.fc_lowpass(checker, "circle", 0.25), torch.zeros_like(checker), atol=1e-12, rtol=0)


def test_masks_values():
    m = R.fc_mask(8, 8, "circle", 0.25)
    assert m[0, 0] == 1 and m[1, 0] == 1 and m[1, 1] == 0 and m[2, 0] == 0  # radius 1/8 cycles/sample
    g = R.fc_mask(8, 8, "gaussian", 0.25, dtype=torch.float64)
    assert g[0, 0] == 1 and abs(g[1, 0].item() - np.exp(-0.5)) < 1e-12   # sigma = 1/8 at f = 1/8


def test_low_precision_inputs_accumulate_in_fp32():
    pred, target, delta, t = fc_inputs((2, 4, 16, 16), torch.bfloat16)
    loss = R.fc_weighted_mse(pred, target, delta, t=t)
    assert loss.dtype == torch.float32
    xhat, v, h, x0, x1, tt = adr_step_inputs((2, 4, 16, 16), torch.bfloat16)
    xn, uhat, delta_x, sq = R.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=tt)
    assert xn.dtype == uhat.dtype == delta_x.dtype == torch.bfloat16 and sq.dtype == torch.float32
    ref = R.fc_weighted_mse(pred.double(), target.double(), delta.double(), t=t.double())
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-5  # only the inputs' rounding is shared


def test_mixed_dtype_state_and_velocity():
    xhat, v, h, *_ = adr_step_inputs((2, 1, 4, 4))
    out = R.adr_euler_step(xhat, v.bfloat16(), h)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, xhat + h.view(-1, 1, 1, 1) * v.bfloat16().float())


# ---------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", MASKS)
def test_gradcheck_fc(mask):
    pred, target, delta, t = fc_inputs((2, 2, 5, 6), torch.float64)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: R.fc_weighted_mse(p, target, delta, mask=mask, t=t, reduction="none"), (pred,))
    # the documented closed form: dL/dpred = 2*w*(pred - target)/numel
    loss = R.fc_weighted_mse(pred, target, delta, mask=mask)
    (g,) = torch.autograd.grad(loss, pred)
    w = R.fc_weight(delta, mask=mask)
    torch.testing.assert_close(g, 2 * w * (pred - target) / pred.numel())


@pytest.mark.parametrize("kind", ["x1", "mse", "direction"])
def test_gradcheck_adr_loss(kind):
    v, u, t = adr_loss_inputs((2, 2, 4, 5), torch.float64)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: R.adr_loss(a, u, t, kind=kind, reduction="none"), (v,))


def test_gradcheck_adr_step():
    xhat, v, h, x0, x1, t = adr_step_inputs((2, 2, 3, 4), torch.float64)
    t = t.clamp(max=0.9)
    xhat.requires_grad_(True)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: R.adr_euler_step(a, b, h, x0=x0, x1=x1, t=t), (xhat, v))


def test_targets_are_not_differentiated():
    v, u, t = adr_loss_inputs((2, 1, 4, 4))
    u.requires_grad_(True)
    v.requires_grad_(True)
    R.adr_loss(v, u, t).backward()
    assert u.grad is None and v.grad is not None
