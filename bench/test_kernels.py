"""pytest-benchmark: the three ops, eager reference vs compiled reference vs fused Triton kernel,
forward, backward and both, at ImageNet-256 latent and CIFAR pixel shapes.

Every case first checks numerical agreement with the eager reference, then times. Effective GB/s
(from the minimal bytes the op must move) goes into extra_info; the group table's ratios compare
the implementations. Run: pytest bench/ --benchmark-only [--benchmark-json out.json]; RFENGINE_BENCH_ROUNDS
sets the timed rounds per case.
"""
import os

import pytest
import torch

import kernels
from bench.cases import IMPLS, OPS, PASSES, SHAPES, backend, implementation, make, scalar

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync():
    if CUDA:
        torch.cuda.synchronize()


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def _skip_reason(impl, dtype_name):
    if impl == "fused" and not kernels.triton_available():
        return "triton is not installed"
    if impl == "fused" and not CUDA and not INTERPRETING:
        return ("fused Triton kernels are timed on a GPU only (set TRITON_INTERPRET=1 to smoke-test them "
                "on CPU: those timings measure the interpreter, not the kernels)")
    if dtype_name == "bf16" and not CUDA:
        return "bf16 timings on GPU only"
    return None


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("op", OPS)
def test_op(benchmark, op, shape_name, dtype_name, impl, pass_):
    reason = _skip_reason(impl, dtype_name)
    if reason:
        pytest.skip(reason)
    dtype = DTYPES[dtype_name]
    benchmark.group = f"{op} {shape_name} {dtype_name} {pass_}"
    fwd, leaf, bytes_fwd, bytes_bwd = make(op, SHAPES[shape_name], dtype, DEVICE)
    fn = implementation(op, impl)
    kernel_backend = "triton" if impl == "fused" else "reference"

    err = _agreement(op, fwd, fn, leaf, kernel_backend)
    # fp32: docs/objectives.md's 1e-5 relative bound (with headroom for reduction order); bf16/fp16 outputs:
    # rounding of the stored values (tests/kernels holds the strict 2x-of-reference check).
    assert err < (2e-5 if dtype == torch.float32 else 2e-2), f"disagrees with the eager reference: {err:.3g}"

    with backend(kernel_backend):
        if pass_ == "fwd":
            def run():
                with torch.no_grad():
                    fwd(fn, leaf)
                _sync()
            benchmark.pedantic(run, rounds=_rounds(), iterations=1, warmup_rounds=_warmup())
            nbytes = bytes_fwd
        elif pass_ == "bwd":
            def setup():
                x = leaf.detach().clone().requires_grad_(True)
                s = scalar(fwd(fn, x))
                _sync()
                return (s, x), {}

            def run(s, x):
                torch.autograd.grad(s, x)
                _sync()
            benchmark.pedantic(run, setup=setup, rounds=_rounds(), iterations=1, warmup_rounds=_warmup())
            nbytes = bytes_bwd
        else:
            def run():
                x = leaf.detach().requires_grad_(True)
                torch.autograd.grad(scalar(fwd(fn, x)), x)
                _sync()
            benchmark.pedantic(run, rounds=_rounds(), iterations=1, warmup_rounds=_warmup())
            nbytes = bytes_fwd + bytes_bwd
    if benchmark.stats is None:  # --benchmark-disable: the case ran once, as a smoke test
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(interpreted=impl == "fused" and not CUDA, op=op, impl=impl, pass_=pass_, shape=list(SHAPES[shape_name]), dtype=dtype_name,
                                device=torch.cuda.get_device_name(0) if CUDA else "cpu",
                                min_bytes=nbytes, gbps=nbytes / mean / 1e9, max_rel_err=err)


def _agreement(op, fwd, fn, leaf, kernel_backend) -> float:
    """Max relative error (against each tensor's max magnitude) of every output and the gradient."""
    def run(f, be):
        with backend(be):
            x = leaf.detach().clone().requires_grad_(True)
            out = fwd(f, x)
            (g,) = torch.autograd.grad(scalar(out), x)
        return [o.detach().double() for o in (out if isinstance(out, tuple) else (out,))] + [g.double()]
    got, ref = run(fn, kernel_backend), run(getattr(kernels.reference, op), "reference")
    return max(((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item() for a, b in zip(got, ref))


def _rounds() -> int:
    """Timed rounds per case: RFENGINE_BENCH_ROUNDS, else 100 on a GPU and 5 on CPU (gpu_all.sh's dry run times
    one: its numbers only fill the files)."""
    return int(os.environ.get("RFENGINE_BENCH_ROUNDS", 100 if CUDA else 5))


def _warmup() -> int:
    return 2 if _rounds() > 1 else 0


def test_copy_bandwidth(benchmark):
    """The card's measured copy bandwidth: the yardstick for the memory-bound kernels."""
    n = (256 << 20) // 4 if CUDA else (32 << 20) // 4
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    benchmark.group = "copy"

    def run():
        dst.copy_(src)
        _sync()
    benchmark.pedantic(run, rounds=_rounds() * 2, iterations=1, warmup_rounds=_warmup())
    if benchmark.stats is None:
        return
    benchmark.extra_info.update(min_bytes=2 * n * 4, gbps=2 * n * 4 / benchmark.stats.stats.mean / 1e9,
                                device=torch.cuda.get_device_name(0) if CUDA else "cpu")
