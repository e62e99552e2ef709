"""DiT / SiT: a diffusion transformer with adaLN-Zero conditioning (Peebles & Xie, 2023), the
velocity network of SiT. Parameter names follow the public DiT/SiT checkpoints so released weights
load: x_embedder, t_embedder, y_embedder, pos_embed, blocks.N.{norm1,attn,norm2,mlp,adaLN_modulation},
final_layer.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from rfengine.models.attention import attention


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """Image (N, C, H, W) -> patch tokens (N, T, D) by a strided convolution."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)               # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Scalar times (N,) -> (N, D): sinusoidal features, then a two-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]                       # (N, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)   # (N, 2*half)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t):
        freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))            # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels (N,) -> (N, D). Index `num_classes` is the null class used for classifier-free
    guidance; label dropout is applied by the trainer (`drop_labels`) so that every model call of
    one training step sees the same labels."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes

    def forward(self, y):
        return self.embedding_table(y)                                 # (N, D)


def drop_labels(y: torch.Tensor, prob: float, null_class: int, generator=None) -> torch.Tensor:
    """Replace each label by the null class with probability `prob` (training-time CFG dropout)."""
    if prob <= 0:
        return y
    drop = torch.rand(y.shape[0], device=y.device, generator=generator) < prob
    return torch.where(drop, torch.full_like(y, null_class), y)


# ---------------------------------------------------------------------------------------------
# Transformer blocks
# ---------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.backend = backend

    def forward(self, x):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                         # (N, h, T, d/h) each
        x = attention(q, k, v, self.backend)                            # (N, h, T, d/h)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))            # (N, T, D)


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU, as in DiT."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by the conditioning c (adaLN-Zero)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attn_backend: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, attn_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))   # (N, T, D)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from tokens to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C_out)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class DiT(nn.Module):
    """Velocity network v(x, t, y): x (N, C, H, W), t (N,) in [0, 1], y (N,) int64 -> (N, C, H, W).
    With `num_classes = 0` the model is unconditional and ignores y."""

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000, learn_sigma: bool = False, attn_backend: str = "sdpa",
                 input_width: int | None = None):
        super().__init__()
        height, width = input_size, input_width or input_size
        if height % patch_size or width % patch_size:
            raise ValueError(f"input {height}x{width} is not divisible by patch size {patch_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.dynamic_batch = False  # set by parallel.apply_compile
        self.patch_size = patch_size
        self.grid = (height // patch_size, width // patch_size)
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        # Fixed sin-cos table; a frozen Parameter (not a buffer) because the released checkpoints store it.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio, attn_backend) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward_flops(self) -> float:
        """Floating-point operations of one image's forward pass (a multiply-add counts 2), from the
        matrix products and attention; elementwise ops, norms and softmax are left out, as in the
        usual MFU accounting. A training step on one image costs 3x this (forward + backward)."""
        d = self.pos_embed.shape[-1]
        tokens = self.grid[0] * self.grid[1]
        patch_in = self.patch_size ** 2 * self.in_channels
        patch_out = self.patch_size ** 2 * self.out_channels
        mlp = self.blocks[0].mlp.fc1.out_features if self.blocks else 4 * d
        per_block = (2 * tokens * d * 3 * d        # qkv
                     + 2 * 2 * tokens * tokens * d  # q k^T and (attention) v
                     + 2 * tokens * d * d           # output projection
                     + 2 * 2 * tokens * d * mlp     # MLP, two layers
                     + 2 * d * 6 * d)               # adaLN modulation (once per image)
        t_embed = 2 * (self.t_embedder.mlp[0].in_features * d + d * d)
        ends = 2 * tokens * patch_in * d + 2 * tokens * d * patch_out + 2 * d * 2 * d
        return float(len(self.blocks) * per_block + t_embed + ends)

    def initialize_weights(self):
        def basic_init(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic_init)
        self.pos_embed.data.copy_(torch.from_numpy(
            sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid)).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data                            # like nn.Linear on flattened patches
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output starts at zero.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        p, c = self.patch_size, self.out_channels
        gh, gw = self.grid
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, gh * p, gw * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed.to(x.dtype)            # (N, T, D)
        c = self.t_embedder(t)                                          # (N, D)
        if self.y_embedder is not None:
            if y is None:
                raise ValueError("y: this model is class-conditional; pass labels (null class for none)")
            c = c + self.y_embedder(y)                                  # (N, D)
        if self.dynamic_batch:  # compiled blocks get a symbolic batch from the first call (parallel.apply_compile)
            torch._dynamo.maybe_mark_dynamic(x, 0)
            torch._dynamo.maybe_mark_dynamic(c, 0)
        for block in self.blocks:
            x = block(x, c)                                             # (N, T, D)
        x = self.unpatchify(self.final_layer(x, c))                     # (N, C_out, H, W)
        if self.learn_sigma:  # SiT checkpoints predict 2C channels; the velocity is the first C
            x = x[:, : self.in_channels].contiguous()  # the fused ops take contiguous tensors
        return x


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """Fixed 2-D sin-cos position table (gh*gw, dim): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for the 2-D sin-cos embedding")

    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)              # (M, d/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)      # (M, d)

    gh, gw = grid
    ww, hh = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    # Width first, then height: the order of the released DiT tables.
    return np.concatenate([one_axis(dim // 2, ww), one_axis(dim // 2, hh)], axis=1)
