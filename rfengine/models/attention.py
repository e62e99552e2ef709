"""Attention backends. `sdpa` (default) lets PyTorch pick flash / memory-efficient kernels;
`xformers` uses xformers' memory-efficient attention (CUDA only, optional install); `math` is the
plain reference (softmax(QK^T/sqrt(d))V), useful for checking the others."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "xformers", "math")


def _xformers():
    try:
        import xformers.ops as xops
    except Exception as e:  # ImportError, or a build that does not match this torch
        return None, f"xformers is not importable ({type(e).__name__}: {e}); pip install -e '.[xformers]'"
    return xops, None


def check_backend(backend: str, device: torch.device, head_dim: int) -> None:
    """Raise one ValueError listing every reason `backend` cannot serve this model on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"model.attention: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "xformers":
        return
    why = []
    if torch.device(device).type != "cuda":
        why.append(f"it runs on CUDA only (device is {device})")
    xops, not_importable = _xformers()
    if xops is None:
        why.append(not_importable)
    if head_dim > 256 or head_dim % 8:
        why.append(f"head size {head_dim} is unsupported (needs a multiple of 8, at most 256)")
    if why:
        raise ValueError("model.attention=xformers cannot serve: " + "; ".join(why) + ". Use sdpa.")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """q, k, v: (N, heads, T, head_dim) -> (N, heads, T, head_dim)."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "xformers":
        xops, why = _xformers()
        if xops is None:
            raise ValueError(why)
        # xformers takes (N, T, heads, head_dim)
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend == "math":
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])   # (N, h, T, T)
        return scores.softmax(dim=-1) @ v
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
