"""The fused Triton ops against the reference: fresh random inputs, outputs poisoned with NaN before
every call, fp32 / bf16 / fp16, odd and non-square shapes, every gradient, bad input.
On CPU the kernels run through the Triton interpreter (TRITON_INTERPRET=1, set in conftest);
on CUDA, when present, natively.

Tolerances (docs/objectives.md section 5): fp32 relative error under 1e-5; low precision within 2x the error the
reference itself makes in that precision against a float64 evaluation of the same inputs, plus a
small atol."""
import os

import pytest
import torch

import kernels
from kernels import reference as R
from tests.kernels.inputs import adr_loss_inputs, adr_step_inputs, assert_agree, fc_inputs

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# Under the interpreter the kernels run on CPU tensors; without it, natively on CUDA (bench/gpu_all.sh).
DEVICES = ["cpu"] if INTERPRETING else (["cuda"] if torch.cuda.is_available() else [])
DEV = DEVICES[0] if DEVICES else "cpu"
pytestmark = [pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed"),
              pytest.mark.skipif(not DEVICES, reason="needs CUDA, or TRITON_INTERPRET=1 for CPU tensors")]
SHAPES = [(3, 4, 17, 23), (2, 1, 32, 32), (4, 4, 64, 64), (2, 3, 9, 8)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MASKS = ["circle", "box", "gaussian"]


@pytest.fixture(autouse=True)
def _fused(monkeypatch):
    """Force the fused backend and poison every buffer the kernels allocate."""
    from kernels.fused import _common
    monkeypatch.setenv("RFENGINE_KERNELS", "triton")
    monkeypatch.setattr(_common, "POISON", True)


def reference_run(fn, inputs, **kw):
    with pytest.MonkeyPatch.context() as m:
        m.setenv("RFENGINE_KERNELS", "reference")
        return fn(*inputs, **kw)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


# ---------------------------------------------------------------------------------------------
# adr_euler_step
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_adr_euler_step_final_forward_and_gradients(shape, dtype, device):
    xhat, v, h, x0, x1, t = adr_step_inputs(shape, dtype, device, seed=hash(shape) % 1000)
    h, t = h.float(), t.float()
    if dtype != torch.float32:
        # uhat = (x1 - xhat_next)/max(1 - t, 1e-3): at t = 1 a one-ulp difference in the rounded
        # state (FMA or not) becomes 1000 ulps. The floor itself is checked in fp32 and fp64.
        t = t.clamp(max=0.9)
    names = ("xhat", "v", "x0", "x1")

    def run(fn, tensors):
        leaves = [x.detach().clone().requires_grad_(True) for x in tensors]
        out = fn(leaves[0], leaves[1], h, x0=leaves[2], x1=leaves[3], t=t)
        # a scalar that touches every output with a different random weight
        g = torch.Generator().manual_seed(1)
        total = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
                    for o in out)
        grads = torch.autograd.grad(total, leaves)
        return [o.detach() for o in out], grads

    tensors = (xhat, v, x0, x1)
    f_out, f_grads = run(kernels.adr_euler_step, tensors)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("RFENGINE_KERNELS", "reference")
        r_out, r_grads = run(kernels.adr_euler_step, tensors)
        e_out, e_grads = run(R.adr_euler_step, [x.double() for x in tensors])
    for i, name in enumerate(("xhat_next", "uhat", "delta_x", "uhat_sqnorm")):
        assert_agree(f_out[i], r_out[i], e_out[i], name)
    for name, fg, rg, eg in zip(names, f_grads, r_grads, e_grads):
        assert_agree(fg, rg, eg, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adr_euler_step_intermediate(dtype, device):
    xhat, v, h, *_ = adr_step_inputs((3, 4, 17, 23), dtype, device)
    leaves = [xhat.clone().requires_grad_(True), v.clone().requires_grad_(True)]
    out = kernels.adr_euler_step(*leaves, h)
    gy = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, gy)
    ref = reference_run(R.adr_euler_step, (xhat, v, h))
    exact = R.adr_euler_step(xhat.double(), v.double(), h.double())
    assert_agree(out.detach(), ref, exact, "xhat_next")
    assert torch.equal(grads[0], gy)
    assert_agree(grads[1], (gy.double() * h.double()[:, None, None, None]).to(dtype),
                 gy.double() * h.double()[:, None, None, None], "grad v")


# ---------------------------------------------------------------------------------------------
# fc_weighted_mse
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fc_weighted_mse_forward_and_gradient(shape, dtype, mask, device):
    pred, target, delta, t = fc_inputs(shape, dtype, device, seed=hash((shape, mask)) % 1000)
    kw = dict(mask=mask, cutoff=0.3, alpha=1.5, t=t.float(), t_max=0.7, reduction="none")

    def run(fn, p, tg, d):
        leaf = p.detach().clone().requires_grad_(True)
        per = fn(leaf, tg, d, **kw)
        gy = torch.linspace(0.5, 1.5, per.shape[0], dtype=per.dtype, device=per.device)
        (grad,) = torch.autograd.grad(per, leaf, gy)
        return per.detach(), grad

    f_loss, f_grad = run(kernels.fc_weighted_mse, pred, target, delta)
    r_loss, r_grad = reference_run(run, (R.fc_weighted_mse, pred, target, delta))
    e_loss, e_grad = run(R.fc_weighted_mse, pred.double(), target.double(), delta.double())
    assert_agree(f_loss, r_loss, e_loss, "loss")
    assert_agree(f_grad, r_grad, e_grad, "grad pred")


def test_fc_alpha_zero_is_mse_and_mean_reduction():
    pred, target, delta, t = fc_inputs((3, 4, 17, 23), device=DEV)
    plain = kernels.fc_weighted_mse(pred, target, delta, alpha=0.0)
    torch.testing.assert_close(plain, (pred - target).pow(2).mean(), rtol=1e-6, atol=0)
    per = kernels.fc_weighted_mse(pred, target, delta, reduction="none")
    torch.testing.assert_close(kernels.fc_weighted_mse(pred, target, delta), per.mean())


# ---------------------------------------------------------------------------------------------
# adr_loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["x1", "mse", "direction"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_adr_loss_forward_and_gradient(shape, dtype, kind, device):
    v, u, t = adr_loss_inputs(shape, dtype, device, seed=hash((shape, kind)) % 1000)
    t = t.float()

    def run(fn, vv, uu):
        leaf = vv.detach().clone().requires_grad_(True)
        per = fn(leaf, uu, t, kind=kind, reduction="none")
        gy = torch.linspace(0.5, 1.5, per.shape[0], dtype=per.dtype, device=per.device)
        (grad,) = torch.autograd.grad(per, leaf, gy)
        return per.detach(), grad

    f_loss, f_grad = run(kernels.adr_loss, v, u)
    r_loss, r_grad = reference_run(run, (R.adr_loss, v, u))
    e_loss, e_grad = run(R.adr_loss, v.double(), u.double())
    assert_agree(f_loss, r_loss, e_loss, "loss")
    assert_agree(f_grad, r_grad, e_grad, "grad v_hat")


def test_direction_loss_tiny_vector_uses_the_eps_floor():
    v, u, t = adr_loss_inputs((2, 1, 5, 5), device=DEV)
    v[0] = 1e-9  # |v| below EPS_NORM: the normalisation is a constant division
    leaf = v.clone().requires_grad_(True)
    out = kernels.adr_loss(leaf, u, t, kind="direction", reduction="none")
    (g,) = torch.autograd.grad(out.sum(), leaf)
    ref_leaf = v.clone().requires_grad_(True)
    ref = R.adr_loss(ref_leaf, u, t, kind="direction", reduction="none")
    (rg,) = torch.autograd.grad(ref.sum(), ref_leaf)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, rg)


# ---------------------------------------------------------------------------------------------
# float64 gradcheck, determinism, the objective through dispatch
# ---------------------------------------------------------------------------------------------

def test_gradcheck_float64_through_the_fused_ops():
    xhat, v, h, x0, x1, t = adr_step_inputs((2, 1, 3, 5), torch.float64, device=DEV)
    leaves = [x.clone().requires_grad_(True) for x in (xhat, v, x0, x1)]
    step = lambda a, b, c, d: kernels.adr_euler_step(a, b, h, x0=c, x1=d, t=t)
    assert torch.autograd.gradcheck(step, leaves)
    pred, target, delta, tt = fc_inputs((2, 2, 5, 6), torch.float64, device=DEV)
    for mask in MASKS:
        assert torch.autograd.gradcheck(lambda p: kernels.fc_weighted_mse(p, target, delta, mask=mask, t=tt,
                                                                          t_max=0.5, reduction="none"),
                                        (pred.clone().requires_grad_(True),))
    vv, uu, t3 = adr_loss_inputs((2, 2, 3, 4), torch.float64, device=DEV)
    for kind in ("x1", "mse", "direction"):
        assert torch.autograd.gradcheck(lambda p: kernels.adr_loss(p, uu, t3, kind=kind, reduction="none"),
                                        (vv.clone().requires_grad_(True),))


def test_fused_ops_are_deterministic():
    pred, target, delta, t = fc_inputs((4, 4, 64, 64), device=DEV)
    a = kernels.fc_weighted_mse(pred, target, delta, reduction="none")
    b = kernels.fc_weighted_mse(pred, target, delta, reduction="none")
    assert torch.equal(a, b)
    xhat, v, h, x0, x1, t = adr_step_inputs((4, 4, 64, 64), device=DEV)
    s1 = kernels.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t)[3]
    s2 = kernels.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t)[3]
    assert torch.equal(s1, s2)


def test_reflexflow_objective_runs_on_the_fused_ops(monkeypatch):
    from rfengine import config
    from rfengine.models import build_model
    from rfengine.objectives import build_objective
    cfg = config.load(None, ["objective.name=reflexflow", "objective.adr.loss=direction"]).objective
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10).to(DEV)
    x1, y = torch.randn(6, 1, 16, 16, device=DEV), torch.randint(0, 10, (6,), device=DEV)
    calls = []
    from kernels import ops
    for name in ("adr_step_final", "fc_weighted_mse", "adr_loss"):
        fn = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _fn=fn, _n=name: calls.append(_n) or _fn(*a))
    losses = {}
    for backend in ("triton", "reference"):
        monkeypatch.setenv("RFENGINE_KERNELS", backend)
        torch.manual_seed(0)
        loss, metrics = build_objective(cfg).loss(model, x1, y, 0)
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        losses[backend] = (loss.detach(), grads)
    assert sorted(set(calls)) == ["adr_loss", "adr_step_final", "fc_weighted_mse"]
    torch.testing.assert_close(losses["triton"][0], losses["reference"][0], rtol=1e-5, atol=0)
    for a, b in zip(losses["triton"][1], losses["reference"][1]):
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-9  # fp32 round-off through the whole model


# ---------------------------------------------------------------------------------------------
# Backend selection (bad kernel inputs: tests/faults/test_kernel_inputs.py)
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not INTERPRETING, reason="checks the CPU interpreter's selection")
def test_backend_selection(monkeypatch):
    x = torch.zeros(1, 1, 2, 2)
    monkeypatch.setenv("RFENGINE_KERNELS", "reference")
    assert not kernels.use_triton(x)
    monkeypatch.setenv("RFENGINE_KERNELS", "auto")
    assert not kernels.use_triton(x)  # CPU tensors go to the reference unless forced
    monkeypatch.setenv("RFENGINE_KERNELS", "triton")
    assert kernels.use_triton(x)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.use_triton(x)
    monkeypatch.setenv("RFENGINE_KERNELS", "fast")
    with pytest.raises(ValueError, match="RFENGINE_KERNELS: expected one of"):
        kernels.backend()
