"""The objectives: exact reductions to vanilla FM, the rollout shared with `ss`, and the telemetry."""
import pytest
import torch

import kernels
from rfengine import config
from rfengine.flow import interpolate
from rfengine.models import build_model
from rfengine.objectives import build_objective
from rfengine.objectives.rollout import pair_times, rollout


def obj_cfg(**sections):
    return config.from_dict({"objective": sections}).objective


@pytest.fixture
def model():
    torch.manual_seed(1)
    m = build_model("DiT-T/2", in_channels=2, input_size=8, num_classes=3)
    for p in m.parameters():  # a non-trivial field (adaLN-Zero would output 0)
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    return m


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, 2, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)


def run(objective, model, x1, y, seed=0, step=0):
    torch.manual_seed(seed)
    return objective.loss(model, x1, y, step)


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_reflexflow_with_both_parts_off_is_exactly_fm(model, batch):
    x1, y = batch
    fm, _ = run(build_objective(obj_cfg(name="fm")), model, x1, y)
    g_fm = grads(model, fm)
    rf, m = run(build_objective(obj_cfg(name="reflexflow", adr={"weight": 0.0}, fc={"alpha": 0.0})), model, x1, y)
    assert torch.equal(fm, rf)
    for a, b in zip(g_fm, grads(model, rf)):
        assert torch.equal(a, b)
    assert "loss_adr" not in m


def test_fc_weight_scales_the_fm_loss_when_both_parts_are_off(model, batch):
    """docs/objectives.md section 3 step 8: L = fc.weight * L_FC, and L_FC = L_FM at fc.alpha = 0 (the study's
    doubled-loss control)."""
    x1, y = batch
    fm, _ = run(build_objective(obj_cfg(name="fm")), model, x1, y)
    rf, _ = run(build_objective(obj_cfg(name="reflexflow", adr={"weight": 0.0}, fc={"alpha": 0.0, "weight": 2.0})),
                model, x1, y)
    assert torch.equal(rf, 2 * fm)


def test_ip_with_zero_gamma_is_fm(model, batch):
    x1, y = batch
    fm, _ = run(build_objective(obj_cfg(name="fm")), model, x1, y)
    ip, _ = run(build_objective(obj_cfg(name="ip", ip={"gamma": 0.0})), model, x1, y)
    assert torch.equal(fm, ip)
    ip2, _ = run(build_objective(obj_cfg(name="ip", ip={"gamma": 0.1})), model, x1, y)
    assert not torch.equal(fm, ip2)


def test_fc_off_gives_fm_term_plus_adr(model, batch):
    x1, y = batch
    fm, _ = run(build_objective(obj_cfg(name="fm")), model, x1, y)
    rf, m = run(build_objective(obj_cfg(name="reflexflow", fc={"alpha": 0.0})), model, x1, y)
    torch.testing.assert_close(m["loss_fc"], fm.detach(), rtol=1e-6, atol=0)  # same draws, same FM term
    torch.testing.assert_close(rf.detach(), m["loss_fc"] + m["loss_adr"])


def test_ss_k1_input_is_the_reflexflow_rollout(model, batch):
    """Both objectives draw x0, t, then roll out the same way: the drifted input xhat is identical."""
    x1, y = batch
    seen = {}

    def spy(name):
        def fn(x, t, yy):
            seen.setdefault(name, []).append(x.detach().clone())
            return model(x, t, yy)
        return fn

    adr = {"steps": 1, "pairing": "grid", "infer_steps": 10}
    run(build_objective(obj_cfg(name="ss", adr=adr)), spy("ss"), x1, y)
    run(build_objective(obj_cfg(name="reflexflow", adr=adr, concat_branches=False)), spy("rf"), x1, y)
    # ss: [rollout input x_s, v(xhat)]; reflexflow (unconcatenated): [x_s, x_t, xhat]
    assert torch.equal(seen["ss"][0], seen["rf"][0])
    assert torch.equal(seen["ss"][1], seen["rf"][2])


def test_concatenated_and_separate_branches_agree(model, batch):
    x1, y = batch
    a, _ = run(build_objective(obj_cfg(name="reflexflow", concat_branches=True)), model, x1, y)
    ga = grads(model, a)
    b, _ = run(build_objective(obj_cfg(name="reflexflow", concat_branches=False)), model, x1, y)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p, q in zip(ga, grads(model, b)):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_loss_terms_match_a_direct_computation(model, batch):
    """Rebuild L = L_FC + L_ADR by hand from the same draws (grid pairing, K = 1, defaults)."""
    x1, y = batch
    cfg = obj_cfg(name="reflexflow")
    loss, m = run(build_objective(cfg), model, x1, y)
    torch.manual_seed(0)
    x0 = torch.randn(x1.shape)
    t = torch.rand(x1.shape[0])
    s = (t - 0.1).clamp(min=0)
    with torch.no_grad():
        xs = interpolate(x0, x1, s)
        xhat = xs + ((t - s).view(-1, 1, 1, 1)) * model(xs, s, y)
    xt = interpolate(x0, x1, t)
    w_t = (1 - t).clamp(min=1e-3).view(-1, 1, 1, 1)
    uhat = (x1 - xhat) / w_t
    v_clean, v_hat = model(xt, t, y), model(xhat, t, y)
    adr = (w_t ** 2 * (v_hat - uhat) ** 2).mean()
    delta = (v_clean - v_hat).detach()
    lp = torch.fft.ifft2(torch.fft.fft2(delta) * kernels.fc_mask(8, 8, "circle", 0.25)).real.abs()
    w = 1 + lp / (lp.mean(dim=(1, 2, 3), keepdim=True) + 1e-8)
    fc = (w * (v_clean - (x1 - x0)) ** 2).mean()
    torch.testing.assert_close(m["loss_adr"], adr.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m["loss_fc"], fc.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.detach(), (fc + adr).detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m["delta_x_sq"], (xhat - xt).pow(2).mean(), rtol=1e-5, atol=1e-9)
    assert m["fc_w_mean"] > 1 and m["fc_w_max"] >= m["fc_w_mean"]


def test_pairing_rules():
    t = torch.tensor([0.05, 0.5, 1.0])
    grid = obj_cfg(adr={"steps": 2, "infer_steps": 10, "pairing": "grid"}).adr
    s, rolled, idx = pair_times(t, grid)
    torch.testing.assert_close(s, torch.tensor([0.0, 0.3, 0.8]))
    assert rolled.all() and torch.equal(idx, torch.arange(3))
    uni = obj_cfg(adr={"pairing": "uniform"}).adr
    s, _, _ = pair_times(torch.rand(1000), uni)
    assert (s >= 0).all()
    half = obj_cfg(adr={"prob": 0.5}).adr
    t = torch.rand(4000) * 0.8 + 0.2
    s, rolled, idx = pair_times(t, half)
    assert int(rolled.sum()) == 2000 and torch.equal(rolled.nonzero().squeeze(1), idx)
    assert torch.equal(s[~rolled], t[~rolled]) and (s[rolled] < t[rolled]).all()
    seen = torch.stack([pair_times(t[:8], half)[1] for _ in range(200)]).float().mean(0)
    assert ((seen > 0.3) & (seen < 0.7)).all(), "every sample is equally likely to be rolled"


@pytest.mark.parametrize("batch_size, prob, want", [(64, 0.25, 16), (64, 0.5, 32), (6, 0.5, 3), (7, 0.25, 2),
                                                    (3, 0.1, 1), (5, 0.0, 0), (5, 1.0, 5)])
def test_rolled_count_is_the_rounded_share_and_at_least_one(batch_size, prob, want):
    from rfengine.objectives.rollout import rolled_count
    assert rolled_count(batch_size, prob) == want


def test_rollout_subset_keeps_unrolled_samples_on_path(model, batch):
    x1, y = batch
    torch.manual_seed(3)
    adr = obj_cfg(adr={"prob": 0.5, "steps": 3}).adr
    x0, t = torch.randn(x1.shape), torch.rand(6)
    with torch.no_grad():
        r = rollout(model, x0, x1, y, t, adr)
    xt = interpolate(x0, x1, t)
    keep = ~r.rolled
    assert torch.equal(r.xhat[keep], xt[keep])
    torch.testing.assert_close(r.delta_x[keep], torch.zeros_like(r.delta_x[keep]), atol=1e-6, rtol=0)
    if r.rolled.any():
        assert r.delta_x[r.rolled].abs().max() > 0


def test_grad_through_rollout_reaches_the_rollout_forward(model, batch):
    x1, y = batch
    calls = []

    def counting(x, t, yy):
        out = model(x, t, yy)
        calls.append(out.requires_grad)
        return out

    run(build_objective(obj_cfg(name="reflexflow", adr={"grad_through_rollout": True})), counting, x1, y)
    assert calls[0] is True
    calls.clear()
    run(build_objective(obj_cfg(name="reflexflow")), counting, x1, y)
    assert calls[0] is False
    # With ADR off (FC on the input-space bias) nothing would use that graph: the rollout runs without one.
    calls.clear()
    cfg = obj_cfg(name="reflexflow", adr={"weight": 0.0, "grad_through_rollout": True}, fc={"bias_space": "input"})
    run(build_objective(cfg), counting, x1, y)
    assert calls == [False, True], "the rollout without a graph, then the clean branch with one"
    from rfengine.objectives.rollout import Rollout
    assert "uhat_sqnorm" not in Rollout.__dataclass_fields__  # computed and never read: gone


@pytest.mark.parametrize("variant", [
    dict(name="fm"), dict(name="ip"), dict(name="ss", adr={"steps": 2}),
    dict(name="reflexflow"), dict(name="reflexflow", adr={"weight": 0.0}),
    dict(name="reflexflow", fc={"bias_space": "input", "mask": "gaussian"}),
    dict(name="reflexflow", adr={"loss": "direction", "pairing": "uniform", "prob": 0.5}),
    dict(name="reflexflow", adr={"loss": "mse", "steps": 2}, fc={"mask": "box", "t_max": 0.5}),
])
def test_every_objective_gives_finite_loss_and_grads(model, batch, variant):
    x1, y = batch
    loss, metrics = run(build_objective(obj_cfg(**variant)), model, x1, y)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    g = grads(model, loss)
    assert g and all(torch.isfinite(x).all() for x in g)
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    if variant["name"] in ("ss", "reflexflow"):
        assert {"delta_x_sq", "s_mean", "t_mean", "gap_mean", "rolled_frac"} <= set(metrics)


@pytest.mark.parametrize("concat, adr_weight", [(True, 1.0), (False, 1.0), (True, 0.0)])
def test_partial_rollout_forwards_only_rolled_samples_with_the_same_math(model, batch, concat, adr_weight):
    """adr.prob < 1: only the rolled samples' drifted states go through the model; for the others
    xhat = x_t, so v_hat = v_clean. Loss and gradients equal the full-batch computation of
    docs/objectives.md section 3 steps 4-8 (both branches over all B samples), which costs more model rows."""
    x1, y = batch
    cfg = obj_cfg(name="reflexflow", concat_branches=concat, adr={"prob": 0.5, "weight": adr_weight})
    obj = build_objective(cfg)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    loss, _ = run(obj, model, x1, y, seed=2)
    hook.remove()
    got = grads(model, loss)

    torch.manual_seed(2)
    x0, t = obj.draw(x1)
    r = rollout(model, x0, x1, y, t, cfg.adr)
    n = int(r.rolled.sum())
    assert n == 3, "adr.prob 0.5 of 6 samples rolls 3"
    assert sum(calls) == n + 6 + n  # rollout n, clean branch 6, drifted branch n (not 6)
    xt = interpolate(x0, x1, t)
    v_clean, v_hat = model(torch.cat([xt, r.xhat]), torch.cat([t, t]), torch.cat([y, y])).chunk(2)
    fc = kernels.fc_weighted_mse(v_clean, x1 - x0, (v_clean - v_hat).detach(), mask="circle", cutoff=0.25,
                                 alpha=1.0, t=t, t_max=1.0)
    want = fc + adr_weight * kernels.adr_loss(v_hat, r.uhat, t, kind="x1") if adr_weight else fc
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-7)
    for p, q in zip(got, grads(model, want)):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("concat", [True, False])
def test_nothing_rolled_still_calls_the_model_for_every_branch(model, batch, concat):
    """adr.prob = 0 on this process: the rollout and the drifted branch run on empty batches (under
    FSDP each call is a collective that every process must join) and v_hat = v_clean."""
    x1, y = batch
    obj = build_objective(obj_cfg(name="reflexflow", concat_branches=concat, adr={"prob": 0.0}))
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    loss, m = run(obj, model, x1, y)
    hook.remove()
    assert calls == ([0, 6] if concat else [0, 6, 0])
    assert float(m["rolled_frac"]) == 0.0 and float(m["delta_x_sq"]) == 0.0
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads(model, loss))

