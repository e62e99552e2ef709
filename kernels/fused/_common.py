"""Launch helpers shared by the fused kernels."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

# Elements per program. On a GPU 1024 elements and 4 warps keep every SM busy at the shapes that
# matter (B*C*H*W >= 1M); under the CPU interpreter each program costs ~0.5 ms, so use big blocks.
GPU_BLOCK = 1024
CPU_BLOCK = 4096


def block_for(x: torch.Tensor, n: int) -> int:
    cap = GPU_BLOCK if x.is_cuda else CPU_BLOCK
    return max(16, min(cap, triton.next_power_of_2(n)))


def acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp64 if any input is fp64 (gradcheck), else fp32: the accumulation dtype of every op."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def grid(b: int, n: int, block: int) -> tuple[int, int]:
    """Programs: one row per sample, `cdiv(n, block)` blocks along the sample's elements."""
    return (b, triton.cdiv(n, block))


# Tests set this to fill every output buffer with NaN before the kernel runs, so that an element a
# kernel fails to write shows up instead of passing by luck.
POISON = False


def empty_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    out = torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)
    return out.fill_(float("nan")) if POISON else out


def empty(shape, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(shape, device=like.device, dtype=dtype)
    return out.fill_(float("nan")) if POISON else out


@triton.jit
def cast_for(x, ptr):
    """x converted to the element type of `ptr`, rounding to nearest even. bf16 is rounded on the
    fp32 bit pattern first: the Triton CPU interpreter truncates fp32 -> bf16 conversions, and on a
    GPU converting an already-representable value is exact, so both agree with torch."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(ptr.dtype.element_ty)


@triton.jit
def row_block(N, BLOCK: tl.constexpr):
    """This program's place on the (sample, block) grid: sample b, block j, the flat element indices
    of its block and their in-bounds mask (every load and store is masked with it)."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    offs = j * BLOCK + tl.arange(0, BLOCK)
    return b, j, b * N + offs, offs < N


@dataclass(frozen=True)
class Launch:
    """One kernel as the dispatch launches it. Every argument of the kernel has a role here:
    `data` pointers point at tensors of the op's dtype, `fp32` pointers at per-sample values or
    partial sums (always fp32 on a GPU), `ints` are element counts (N divisible by 16 in real
    launches of aligned shapes), `floats` are scalars; the constexprs are ACC, BLOCK and `variants`.
    `reads`/`writes` name the data tensors the op itself must move per element (its minimum)."""
    kernel: object
    data: tuple = ()
    fp32: tuple = ()
    ints: tuple = ()
    floats: tuple = ()
    variants: tuple = ({},)
    num_warps: int = 4
    needs: dict = field(default_factory=dict)  # variant label -> (reads, writes) of the op's minimum

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def label(self, variant: dict) -> str:
        return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in variant.items()) or "-"
