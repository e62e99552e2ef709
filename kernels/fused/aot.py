"""Ahead-of-time compilation of the fused kernels for real GPU targets, on any machine (no GPU
needed): the triton wheel carries NVIDIA's ptxas. Each kernel file declares what it launches in a
`LAUNCHES` table next to its launch code (argument roles, constexpr variants, num_warps); this
module turns a table entry into the signature the JIT would specialise for a real launch (16-byte
aligned pointers, sizes divisible by 16), compiles it, and reads what the hardware would run:
registers, spills, shared memory, and whether per-element loads are 128-bit vector loads.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
import triton.language as tl

from kernels.fused._common import Launch

DTYPES = {"fp32": (tl.float32, 4), "bf16": (tl.bfloat16, 2), "fp16": (tl.float16, 2)}
ACC_BLOCK = 1024  # _common.GPU_BLOCK: what the dispatch launches on a GPU


def signature(launch: Launch, dtype: str, variant: dict, block: int | None = None):
    """(signature, constexprs, attrs) for `triton.compile(ASTSource(...))`; an argument with no role
    in the table raises, so a new kernel argument cannot be left out of the checks."""
    names = launch.kernel.arg_names
    consts = {"ACC": tl.float32, "BLOCK": block or ACC_BLOCK, **variant}
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if name in consts:
            sig[name] = "constexpr"
            constexprs[(i,)] = consts[name]
        elif name in launch.data:
            sig[name] = f"*{dtype}"
        elif name in launch.fp32:
            sig[name] = "*fp32"
        elif name in launch.ints:
            sig[name] = "i32"
        elif name in launch.floats:
            sig[name] = "fp32"
        else:
            raise ValueError(f"{launch.name}: argument {name!r} has no role in its LAUNCHES entry")
        if sig[name].startswith("*") or name == "N":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, constexprs, attrs


def ptxas(arch: int) -> str:
    """The ptxas that triton itself uses for sm_`arch` (the wheel ships two; the PTX version triton
    writes needs the newer one on recent releases)."""
    from triton.backends.nvidia import compiler as nv
    try:
        tool = nv.get_ptxas(arch)
    except TypeError:  # older triton: one ptxas for every target
        tool = nv.get_ptxas()
    if not os.path.isfile(tool.path):
        raise FileNotFoundError(f"no ptxas for sm_{arch}: {tool.path}")
    return tool.path


def has_cuda_backend() -> bool:
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
        return os.path.isfile(ptxas(90))
    except (ImportError, FileNotFoundError):
        return False


@dataclass
class Report:
    kernel: str
    variant: str
    dtype: str
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    masked_loads: int
    vector_loads: int
    bytes_per_element: float
    min_bytes_per_element: float | None

    @property
    def vectorised(self) -> bool:
        """Every per-element (masked) global load is a 128-bit load."""
        return self.masked_loads > 0 and self.vector_loads == self.masked_loads


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_one(launch: Launch, dtype: str, variant: dict, arch: int) -> Report:
    """Compile for sm_`arch` and read registers and spills (`ptxas -v`) and the PTX's global memory ops."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig, constexprs, attrs = signature(launch, dtype, variant)
    src = ASTSource(fn=launch.kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})
    ptx = compiled.asm["ptx"]
    gpu = f"sm_{arch}a" if arch in (90, 100) else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas(arch), "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    text = out.stdout + out.stderr
    regs, spill = _PTXAS.search(text), _SPILL.search(text)
    loads = [line for line in ptx.splitlines() if "ld.global" in line]
    stores = [line for line in ptx.splitlines() if "st.global" in line]
    masked = [line for line in loads if line.strip().startswith("@")]
    threads = 32 * launch.num_warps
    moved = sum(_bytes(line) for line in [*masked, *[s for s in stores if ".v" in s]]) * threads / ACC_BLOCK
    reads, writes = launch.needs.get(launch.label(variant), (None, None))
    need = None if reads is None else (len(reads) + len(writes)) * DTYPES[dtype][1]
    return Report(launch.name, launch.label(variant), dtype, arch, int(regs.group(1)) if regs else -1,
                  int(spill.group(1)) if spill else 0, int(spill.group(2)) if spill else 0,
                  int(compiled.metadata.shared), len(masked), sum(".v4." in line for line in masked), moved, need)


def _bytes(line: str) -> int:
    """Bytes one thread moves with one PTX global load/store (vector width x element width)."""
    width = re.search(r"\.v(\d)\.", line)
    bits = re.search(r"\.b(\d+)", line)
    return (int(width.group(1)) if width else 1) * (int(bits.group(1)) // 8 if bits else 4)


def all_launches() -> list[Launch]:
    """Every LAUNCHES entry of the fused kernel files."""
    from kernels.fused import adr_loss, adr_step, fc_loss
    return [*adr_step.LAUNCHES, *fc_loss.LAUNCHES, *adr_loss.LAUNCHES]


def jit_kernels() -> list[str]:
    """Names of every @triton.jit kernel the fused files define (helpers in _common excluded)."""
    from triton.runtime.interpreter import InterpretedFunction
    from kernels.fused import adr_loss, adr_step, fc_loss
    return [f"{m.__name__}.{name}" for m in (adr_step, fc_loss, adr_loss) for name, obj in vars(m).items()
            if isinstance(obj, (triton.runtime.JITFunction, InterpretedFunction)) and obj.fn.__module__ == m.__name__]


def check_all(archs=(80, 90, 100), dtypes=tuple(DTYPES)) -> list[dict]:
    """Compile every LAUNCHES entry, variant, dtype and target; one dict per compile (an `error`
    entry where it failed, a `skipped` one where no ptxas serves the target)."""
    import dataclasses
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 replaces @triton.jit with the interpreter: run without it")
    rows = []
    for arch in archs:
        try:
            ptxas(arch)
        except FileNotFoundError as e:
            rows.append({"arch": arch, "skipped": str(e)})
            continue
        for launch in all_launches():
            for variant in launch.variants:
                for dtype in dtypes:
                    try:
                        r = compile_one(launch, dtype, variant, arch)
                        rows.append({**dataclasses.asdict(r), "vectorised": r.vectorised})
                    except Exception as e:  # reported, and the caller (test or report) fails on it
                        rows.append({"kernel": launch.name, "variant": launch.label(variant), "dtype": dtype,
                                     "arch": arch, "error": f"{type(e).__name__}: {e}"})
    return rows


if __name__ == "__main__":  # python -m kernels.fused.aot: the rows as JSON (tests/kernels/test_aot.py)
    import json
    import sys
    archs = [int(a) for a in sys.argv[1:]] or [80, 90, 100]
    print(json.dumps({"triton": triton.__version__, "rows": check_all(archs)}))
