"""The benchmark cases: for each op, a callable per implementation (eager reference, compiled
reference, fused) and pass (fwd, bwd, fwdbwd), plus the minimal bytes the op must move."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

import kernels
from kernels import reference as R
from tests.kernels.inputs import adr_loss_inputs, adr_step_inputs, fc_inputs

SHAPES = {"latent256": (256, 4, 32, 32), "cifar32": (128, 3, 32, 32)}
OPS = ("adr_euler_step", "fc_weighted_mse", "adr_loss")
IMPLS = ("eager", "compiled", "fused")
PASSES = ("fwd", "bwd", "fwdbwd")


@contextmanager
def backend(name: str):
    old = os.environ.get("RFENGINE_KERNELS")
    os.environ["RFENGINE_KERNELS"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RFENGINE_KERNELS", None)
        else:
            os.environ["RFENGINE_KERNELS"] = old


def make(op: str, shape, dtype, device):
    """(forward function of the differentiable leaf, inputs (leaf first), minimal bytes fwd / bwd)."""
    n = 1
    for s in shape:
        n *= s
    es = torch.finfo(dtype).bits // 8
    if op == "adr_euler_step":
        xhat, v, h, x0, x1, t = adr_step_inputs(shape, dtype, device)
        h, t = h.float(), t.float().clamp(max=0.95)

        def fwd(fn, v_leaf):
            return fn(xhat, v_leaf, h, x0=x0, x1=x1, t=t)
        # fwd: read xhat, v, x0, x1; write xhat_next, uhat, delta_x. bwd (grad into v through all
        # three outputs): read 3 output grads, v, xhat_next, x1; write 4 input grads.
        return fwd, v, 7 * n * es, 10 * n * es
    if op == "fc_weighted_mse":
        pred, target, delta, t = fc_inputs(shape, dtype, device)

        def fwd(fn, p_leaf):
            return fn(p_leaf, target, delta, t=t.float(), t_max=0.9)
        # fwd: read pred, target, delta. bwd: read pred, target, low-pass; write grad.
        return fwd, pred, 3 * n * es, 4 * n * es
    v, u, t = adr_loss_inputs(shape, dtype, device)

    def fwd(fn, v_leaf):
        return fn(v_leaf, u, t.float().clamp(max=0.95), kind="x1")
    return fwd, v, 2 * n * es, 3 * n * es


def scalar(out):
    """One scalar touching every output (so the backward reaches every gradient path)."""
    if isinstance(out, tuple):
        return sum(o.float().mean() for o in out)
    return out.float().mean()


_COMPILED: dict = {}


def implementation(op: str, impl: str):
    """The op's function for `impl`, run under the matching backend."""
    ref = getattr(R, op)
    if impl == "eager":
        return ref
    if impl == "compiled":
        if op not in _COMPILED:
            _COMPILED[op] = torch.compile(ref)
        return _COMPILED[op]
    return getattr(kernels, op)
