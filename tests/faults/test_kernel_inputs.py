"""Kernel inputs with the wrong shape, dtype, device or layout are rejected with a ValueError that
names the argument, by the reference and by the fused ops."""
import os

import pytest
import torch

import kernels
from kernels import reference as R
from tests.kernels.inputs import adr_step_inputs, fc_inputs

DEV = "cpu"


def test_bad_inputs_raise_named_errors():
    xhat, v, h, x0, x1, t = adr_step_inputs((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"v: expected shape \(2, 3, 4, 4\)"):
        R.adr_euler_step(xhat, v[:, :2], h)
    with pytest.raises(ValueError, match="h: expected shape \\(2,\\)"):
        R.adr_euler_step(xhat, v, h[:1])
    with pytest.raises(ValueError, match="xhat: expected a floating dtype"):
        R.adr_euler_step(xhat.long(), v, h)
    with pytest.raises(ValueError, match="v: expected device"):
        R.adr_euler_step(xhat, v.to("meta"), h)
    with pytest.raises(ValueError, match=r"t: expected values in \[0, 1\]"):
        R.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t + 1.5)
    with pytest.raises(ValueError, match="x0, x1, t"):
        R.adr_euler_step(xhat, v, h, x0=x0)
    with pytest.raises(ValueError, match=r"xhat: expected shape \(B, C, H, W\)"):
        R.adr_euler_step(xhat[0], v[0], h)
    pred, target, delta, tt = fc_inputs((2, 1, 6, 6))
    with pytest.raises(ValueError, match="cutoff: expected > 0"):
        R.fc_weighted_mse(pred, target, delta, cutoff=0.0)
    with pytest.raises(ValueError, match="alpha: expected >= 0"):
        R.fc_weighted_mse(pred, target, delta, alpha=-1.0)
    with pytest.raises(ValueError, match="mask: expected one of"):
        R.fc_weighted_mse(pred, target, delta, mask="ring")
    with pytest.raises(ValueError, match="delta: expected shape"):
        R.fc_weighted_mse(pred, target, delta[:, :, :5])
    with pytest.raises(ValueError, match="reduction"):
        R.fc_weighted_mse(pred, target, delta, reduction="sum")
    with pytest.raises(ValueError, match=r"t: expected values in \[0, 1\]"):
        R.adr_loss(pred, target, -tt)
    with pytest.raises(ValueError, match="kind: expected one of"):
        R.adr_loss(pred, target, tt, kind="l1")


@pytest.mark.skipif(not (kernels.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="the fused ops on CPU tensors need triton and TRITON_INTERPRET=1")
def test_fused_bad_input_is_rejected_by_name(monkeypatch):
    monkeypatch.setenv("RFENGINE_KERNELS", "triton")
    xhat, v, h, x0, x1, t = adr_step_inputs((2, 3, 8, 8), device=DEV)
    with pytest.raises(ValueError, match=r"v: expected a contiguous tensor"):
        kernels.adr_euler_step(xhat, v.transpose(2, 3), h)
    with pytest.raises(ValueError, match=r"x1: expected a contiguous tensor"):
        kernels.adr_euler_step(xhat, v, h, x0=x0, x1=x1.transpose(2, 3), t=t)
    with pytest.raises(ValueError, match=r"xhat: expected a floating dtype"):
        kernels.adr_euler_step(xhat.int(), v, h)
    with pytest.raises(ValueError, match=r"v: expected dtype float16, bfloat16, float32 or float64"):
        kernels.adr_euler_step(xhat, v.to(torch.float8_e4m3fn), h)
    with pytest.raises(ValueError, match=r"v: expected device"):
        kernels.adr_euler_step(xhat, v.to("meta"), h)
    with pytest.raises(ValueError, match=r"v: expected shape \(2, 3, 8, 8\)"):
        kernels.adr_euler_step(xhat, v[:, :2].contiguous(), h)
    with pytest.raises(ValueError, match=r"t: expected values in \[0, 1\]"):
        kernels.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t + 2)
    pred, target, delta, tt = fc_inputs((2, 3, 8, 8), device=DEV)
    with pytest.raises(ValueError, match="delta: expected a contiguous tensor"):
        kernels.fc_weighted_mse(pred, target, delta.transpose(2, 3))
    with pytest.raises(ValueError, match="cutoff: expected > 0"):
        kernels.fc_weighted_mse(pred, target, delta, cutoff=-1.0)
    with pytest.raises(ValueError, match="mask: expected one of"):
        kernels.fc_weighted_mse(pred, target, delta, mask="ring")
    with pytest.raises(ValueError, match="uhat: expected a contiguous tensor"):
        kernels.adr_loss(pred, target.transpose(2, 3), tt)
    with pytest.raises(ValueError, match="kind: expected one of"):
        kernels.adr_loss(pred, target, tt, kind="l2")


@pytest.mark.parametrize("enabled", [True, False])
def test_value_checks_run_only_when_switched_on(enabled):
    """Times outside [0, 1] are caught by the value check when it is on (tests, debugging); off (the
    default on the training path) the op reads nothing back to the host and so cannot see them."""
    from kernels._checks import value_checks
    xhat, v, h = (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(2))
    t = torch.tensor([0.5, 1.5])
    with value_checks(enabled):
        if enabled:
            with pytest.raises(ValueError, match=r"t: expected values in \[0, 1\], got min 0.5, max 1.5"):
                R.adr_euler_step(xhat, v, h, x0=xhat, x1=v, t=t)
        else:
            R.adr_euler_step(xhat, v, h, x0=xhat, x1=v, t=t)


def test_value_checks_follow_the_environment(monkeypatch):
    from kernels._checks import values_checked
    monkeypatch.setenv("RFENGINE_CHECK_VALUES", "0")
    assert not values_checked()
    monkeypatch.setenv("RFENGINE_CHECK_VALUES", "1")
    assert values_checked()
