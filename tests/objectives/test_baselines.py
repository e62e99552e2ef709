"""The strong cheap baselines (docs/objectives.md section 4.1) and FC's variants (section 4.2), each against a hand
computation: logit-normal times, Min-SNR-gamma for the velocity loss, the cosine velocity loss, FC on
the training forward's own error (`self`), the all-pass mask (`none`), and the rows a partial rollout
leaves alone (their FC weight is exactly 1, even when the kernel rounds x_t differently)."""
import math

import numpy as np
import pytest
import torch

import kernels
from rfengine import config
from rfengine.flow import sample_times
from rfengine.objectives import build_objective
from rfengine.objectives import rollout as rollout_mod
from rfengine.objectives.weighting import min_snr_numerator, time_mean


def obj_cfg(**sections):
    return config.from_dict({"objective": sections}).objective


def field(x, t, y):
    """A fixed velocity field (no parameters): the loss is then a function of the draws alone."""
    return 0.5 * x + t.reshape(-1, 1, 1, 1) - 0.25 * x.pow(2)


def draws(x1, seed, sampler="uniform"):
    """What every objective draws first, in its order: noise x0, then t."""
    torch.manual_seed(seed)
    x0 = torch.randn(x1.shape)
    t = torch.rand(x1.shape[0]) if sampler == "uniform" else torch.sigmoid(torch.randn(x1.shape[0]))
    return x0, t


X1 = torch.randn(5, 3, 6, 7, generator=torch.Generator().manual_seed(9))


def test_logit_normal_times_are_the_sigmoid_of_a_standard_normal():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    got = sample_times(1000, "logit_normal", mean=0.3, std=1.7, generator=g1)
    want = 1 / (1 + torch.exp(-(0.3 + 1.7 * torch.randn(1000, generator=g2))))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_min_snr_normaliser_by_hand():
    """Uniform t: the mean of min(t^2, g(1-t)^2) is a*^3/3 + g(1-a*)^3/3 with a* = sqrt(g)/(1 + sqrt(g))
    (t^2 below the crossing, g(1-t)^2 above it). Logit-normal: a Monte-Carlo estimate."""
    for g in (5.0, 1.0, 0.25):
        a = math.sqrt(g) / (1 + math.sqrt(g))
        want = a ** 3 / 3 + g * (1 - a) ** 3 / 3
        assert time_mean(lambda t: min_snr_numerator(t, g), "uniform") == pytest.approx(want, rel=1e-8)
    t = torch.sigmoid(0.5 + 0.8 * torch.randn(4_000_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    mc = float(min_snr_numerator(t, 5.0).mean())
    assert time_mean(lambda t: min_snr_numerator(t, 5.0), "logit_normal", 0.5, 0.8) == pytest.approx(mc, rel=2e-3)


@pytest.mark.parametrize("name", ["fm", "reflexflow"])
@pytest.mark.parametrize("sampler", ["uniform", "logit_normal"])
def test_min_snr_weighted_loss_by_hand(name, sampler):
    extra = {"adr": {"weight": 0.0}, "fc": {"alpha": 0.0}} if name == "reflexflow" else {}
    obj = build_objective(obj_cfg(name=name, time_sampler=sampler, weighting="min_snr", min_snr_gamma=5.0, **extra))
    torch.manual_seed(3)
    loss, _ = obj.loss(field, X1, None, 0)
    x0, t = draws(X1, 3, sampler)
    xt = t.reshape(-1, 1, 1, 1) * X1 + (1 - t.reshape(-1, 1, 1, 1)) * x0
    per = (field(xt, t, None) - (X1 - x0)).pow(2).mean(dim=(1, 2, 3))
    c = time_mean(lambda s: np.minimum(s * s, 5 * (1 - s) ** 2), sampler)
    want = (per * torch.minimum(t * t, 5 * (1 - t) ** 2) / c).mean()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["fm", "ip", "reflexflow"])
def test_cosine_velocity_loss_by_hand(name):
    base = build_objective(obj_cfg(name=name))
    with_cos = build_objective(obj_cfg(name=name, cosine_weight=0.7))
    torch.manual_seed(8)
    plain, _ = base.loss(field, X1, None, 0)
    torch.manual_seed(8)
    loss, _ = with_cos.loss(field, X1, None, 0)
    # (reflexflow: the FC-weighted term is the same in both runs; only the cosine term is added)
    x0, t = draws(X1, 8)
    xt = t.reshape(-1, 1, 1, 1) * X1 + (1 - t.reshape(-1, 1, 1, 1)) * x0
    if name == "ip":
        torch.manual_seed(8)
        x0, t = draws(X1, 8)
        xi = torch.randn(X1.shape)
        xt = t.reshape(-1, 1, 1, 1) * X1 + (1 - t.reshape(-1, 1, 1, 1)) * (x0 + 0.1 * xi)
    v, u = field(xt, t, None).flatten(1), (X1 - x0).flatten(1)
    cos = (v * u).sum(1) / (v.norm(dim=1) * u.norm(dim=1))
    torch.testing.assert_close(loss - plain, 0.7 * (1 - cos).mean(), rtol=1e-4, atol=1e-6)


def test_weighting_off_is_vanilla_fm_bit_for_bit():
    a = build_objective(obj_cfg(name="fm"))
    b = build_objective(obj_cfg(name="fm", weighting="none", cosine_weight=0.0))
    torch.manual_seed(1)
    la, _ = a.loss(field, X1, None, 0)
    torch.manual_seed(1)
    lb, _ = b.loss(field, X1, None, 0)
    assert torch.equal(la, lb)


def test_fc_self_weights_by_the_training_forwards_own_error_with_one_forward():
    calls = []

    def model(x, t, y):
        calls.append(x.shape[0])
        return field(x, t, y)

    obj = build_objective(obj_cfg(name="reflexflow", adr={"weight": 0.0}, fc={"bias_space": "self"}))
    assert not obj.batch_differs_from_data and not obj.varies_batch
    torch.manual_seed(2)
    loss, m = obj.loss(model, X1, None, 0)
    assert calls == [5], "one forward of the data batch, as FM"
    x0, t = draws(X1, 2)
    xt = t.reshape(-1, 1, 1, 1) * X1 + (1 - t.reshape(-1, 1, 1, 1)) * x0
    err = field(xt, t, None) - (X1 - x0)
    lp = torch.fft.ifft2(torch.fft.fft2(err) * kernels.fc_mask(6, 7, "circle", 0.25)).real.abs()
    w = 1 + lp / (lp.mean(dim=(1, 2, 3), keepdim=True) + 1e-8)
    torch.testing.assert_close(loss, (w * err.pow(2)).mean(), rtol=1e-5, atol=1e-7)
    assert "delta_x_sq" not in m and float(m["fc_w_mean"]) > 1


def test_fc_mask_none_is_all_pass():
    d = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kernels.fc_lowpass(d, "none"), d)
    assert torch.equal(kernels.fc_mask(5, 7, "none"), torch.ones(5, 7))
    w = kernels.fc_weight(d, mask="none", alpha=0.5)
    torch.testing.assert_close(w, 1 + 0.5 * d.abs() / (d.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-8))


@pytest.mark.parametrize("mask", ["circle", "none"])
def test_fc_self_with_mask_none_matches_the_fused_op(mask):
    """The `self` bias through the fused op (the Triton interpreter) equals the reference."""
    pred, target = torch.randn(3, 2, 5, 7), torch.randn(3, 2, 5, 7)
    delta = (pred - target).detach()
    ref = kernels.reference.fc_weighted_mse(pred, target, delta, mask=mask, reduction="none")
    fused = kernels._fused_fc_weighted_mse(pred.contiguous(), target.contiguous(), delta.contiguous(), mask=mask,
                                           cutoff=0.25, alpha=1.0, t=None, t_max=1.0, reduction="none")
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-7)


def test_unrolled_rows_get_weight_one_even_when_x_t_is_rounded_differently(monkeypatch):
    """adr.prob < 1 with FC on the input-space bias: a fused kernel may recompute x_t with FMAs where
    `interpolate` does not, so delta_x of a row that was not rolled out may be an ulp, not 0; after FC's
    scale-free normalisation that ulp would be a full-contrast weight of mean 1 + alpha. Injected here
    as 1e-7 on every row of the kernel's delta_x: the rows not rolled out still get delta_x = 0 and
    weight exactly 1."""
    real = kernels.adr_euler_step

    def rounding_differently(xhat, v, h, **kw):
        out = real(xhat, v, h, **kw)
        if kw.get("t") is None:
            return out
        xn, uhat, delta_x, sq = out
        return xn, uhat, delta_x + 1e-7, sq

    monkeypatch.setattr(rollout_mod.kernels, "adr_euler_step", rounding_differently)
    adr = obj_cfg(adr={"prob": 0.5, "weight": 0.0}, fc={"bias_space": "input"}).adr
    torch.manual_seed(0)
    x0, t = torch.randn(X1.shape), torch.rand(5) * 0.8 + 0.2
    with torch.no_grad():
        r = rollout_mod.rollout(field, x0, X1, None, t, adr)
    keep = ~r.rolled
    assert keep.any() and r.rolled.any()
    assert torch.equal(r.delta_x[keep], torch.zeros_like(r.delta_x[keep]))
    w = kernels.fc_weight(r.delta_x)
    assert torch.equal(w[keep], torch.ones_like(w[keep]))
    assert (w[r.rolled] != 1).any()
