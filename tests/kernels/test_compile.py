"""The ops under torch.compile: the reference traces with fullgraph=True on CPU; the fused custom ops
trace with fullgraph=True on CUDA (through their fake implementations); interpreted Triton calls on
CPU are kept out of the graph and still give the eager result."""
import os

import pytest
import torch

import kernels
from tests.kernels.inputs import adr_step_inputs

pytestmark = pytest.mark.usefixtures("inductor_cache")  # the session's compile cache, dynamo reset


def hot_path(xhat, v, h, x0, x1, t, pred, target):
    xn, uhat, dx, sq = kernels.adr_euler_step(xhat, v, h, x0=x0, x1=x1, t=t)
    fc = kernels.fc_weighted_mse(pred, target, dx, t=t, t_max=0.9)
    adr = kernels.adr_loss(pred, uhat, t)
    return fc + adr + sq.mean() * 0


def _inputs(device):
    xhat, v, h, x0, x1, t = adr_step_inputs((4, 4, 16, 16), device=device)
    t = t.clamp(max=0.95)
    pred = torch.randn(4, 4, 16, 16, device=device, requires_grad=True)
    target = torch.randn(4, 4, 16, 16, device=device)
    return xhat, v, h, x0, x1, t, pred, target


def _check(compiled, device):
    args = _inputs(device)
    eager = hot_path(*args)
    (g_eager,) = torch.autograd.grad(eager, args[-2])
    out = compiled(*args)
    (g_comp,) = torch.autograd.grad(out, args[-2])
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-5, atol=1e-7)


def test_reference_ops_compile_fullgraph_on_cpu(monkeypatch):
    monkeypatch.setenv("RFENGINE_KERNELS", "reference")
    _check(torch.compile(hot_path, fullgraph=True), "cpu")


@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")
def test_interpreted_fused_ops_stay_eager_inside_compile_on_cpu(monkeypatch):
    monkeypatch.setenv("RFENGINE_KERNELS", "triton")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    _check(torch.compile(hot_path), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the fused ops trace only there")
def test_fused_ops_compile_fullgraph_on_cuda(monkeypatch):
    monkeypatch.setenv("RFENGINE_KERNELS", "auto")
    _check(torch.compile(hot_path, fullgraph=True), "cuda")
