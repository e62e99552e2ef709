"""Ahead-of-time compilation of every fused kernel for real GPU targets (no GPU needed): every
constexpr variant the dispatch launches, fp32/bf16/fp16, sm_80/sm_90 (and sm_100 where the wheel's
ptxas serves it), with the JIT's specialisations for aligned launches (kernels/fused/aot.py). Each
must compile, spill nothing, and load every element with 128-bit vector loads. The kernels and
their argument roles come from the kernel files' LAUNCHES tables.

The compiles run in a child process: this suite sets TRITON_INTERPRET=1, which replaces
@triton.jit with the CPU interpreter."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

aot = pytest.importorskip("kernels.fused.aot")
if not aot.has_cuda_backend():
    pytest.skip("the installed triton has no CUDA backend (ptxas) to compile for GPU targets", allow_module_level=True)


def _child(*args, script=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-m", "kernels.fused.aot", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def rows():
    return json.loads(_child("80", "90", "100"))["rows"]


def test_every_kernel_has_a_launch_entry():
    declared = {f"{launch.kernel.fn.__module__}.{launch.name}" for launch in aot.all_launches()}
    assert declared == set(aot.jit_kernels())


def test_every_variant_compiles_for_every_target(rows):
    compiled = [r for r in rows if "skipped" not in r]
    assert not [r for r in compiled if "error" in r], [r for r in compiled if "error" in r][:3]
    variants = sum(len(launch.variants) for launch in aot.all_launches())
    archs = {r["arch"] for r in compiled}
    assert {80, 90} <= archs
    assert len(compiled) == variants * len(aot.DTYPES) * len(archs)


def test_no_spills_and_128_bit_loads(rows):
    compiled = [r for r in rows if "registers" in r]
    spills = [f"{r['kernel']}[{r['variant']}] {r['dtype']} sm_{r['arch']}" for r in compiled
              if r["spill_stores"] or r["spill_loads"]]
    assert not spills, spills
    narrow = [f"{r['kernel']}[{r['variant']}] {r['dtype']} sm_{r['arch']}: {r['vector_loads']}/{r['masked_loads']}"
              for r in compiled if r["dtype"] in ("fp32", "bf16") and not r["vectorised"]]
    assert not narrow, narrow
    assert all(r["bytes_per_element"] >= r["min_bytes_per_element"] for r in compiled if r["min_bytes_per_element"])


def test_the_checks_fail_on_a_spilling_a_broken_or_an_undeclared_kernel(tmp_path):
    """The same checker on kernels made to fail: one that keeps too much per thread (it spills), one
    that does not type-check (it does not compile), one with an argument missing from its entry."""
    script = tmp_path / "failing_kernels.py"  # @triton.jit needs its source in a file
    script.write_text(textwrap.dedent("""
        import triton, triton.language as tl
        from kernels.fused import aot

        @triton.jit
        def spiller(x_ptr, y_ptr, N, ACC: tl.constexpr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            m = offs < N
            x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
            s = tl.sum(x * x, axis=0)  # every thread keeps its BLOCK/32 values live across the reduction
            tl.store(y_ptr + offs, (x / s).to(y_ptr.dtype.element_ty), mask=m)

        @triton.jit
        def broken(x_ptr, N, ACC: tl.constexpr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < N) @ offs, mask=offs < N)

        aot.ACC_BLOCK = 1 << 13  # 256 fp32 values per thread: more than 255 registers
        r = aot.compile_one(aot.Launch(spiller, data=("x_ptr", "y_ptr"), ints=("N",), num_warps=1), "fp32", {}, 90)
        print("spills", r.spill_stores, r.spill_loads)
        try:
            aot.compile_one(aot.Launch(broken, data=("x_ptr",), ints=("N",)), "fp32", {}, 90)
            print("broken compiled")
        except Exception as e:
            print("broken refused", type(e).__name__)
        try:
            aot.signature(aot.Launch(spiller, data=("x_ptr",), ints=("N",)), "fp32", {})
        except ValueError as e:
            print("undeclared:", e)
    """))
    out = _child(script=script)
    spills = [int(x) for x in out.split("spills ")[1].split()[:2]]
    assert spills[0] > 0 and spills[1] > 0, out
    assert "broken refused" in out, out
    assert "argument 'y_ptr' has no role" in out, out
