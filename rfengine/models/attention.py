"""Attention backends. `sdpa` (default) lets PyTorch pick flash / memory-efficient kernels;
`math` is the plain reference (softmax(QK^T/sqrt(d))V), useful for checking the others."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "math")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """q, k, v: (N, heads, T, head_dim) -> (N, heads, T, head_dim)."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "math":
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])   # (N, h, T, T)
        return scores.softmax(dim=-1) @ v
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
