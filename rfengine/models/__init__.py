"""Model registry: name -> DiT size. `DiT-T` is a tiny CPU size; S/B/L/XL follow DiT/SiT (`SiT-*` are
aliases of the same sizes)."""
from __future__ import annotations

from rfengine.models.attention import BACKENDS
from rfengine.models.dit import DiT, drop_labels

# (depth, hidden_size, num_heads)
_SIZES = {"T": (4, 64, 4), "S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
# SiT uses the DiT architecture unchanged; its names are aliases (SiT-B/2 == DiT-B/2).
MODEL_SIZES = {f"{family}-{s}/{p}": (*dims, p) for family in ("DiT", "SiT")
               for s, dims in _SIZES.items() for p in (2, 4, 8)}


def build_model(arch: str, *, in_channels: int, input_size: int | tuple[int, int], num_classes: int,
                learn_sigma: bool = False, class_dropout: float = 0.1, attention: str = "sdpa") -> DiT:
    """Construct a registered size for images of `in_channels` x input_size."""
    if arch not in MODEL_SIZES:
        raise ValueError(f"arch: unknown {arch!r}; valid: {', '.join(MODEL_SIZES)}")
    depth, hidden, heads, patch = MODEL_SIZES[arch]
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    return DiT(input_size=h, input_width=w, patch_size=patch, in_channels=in_channels, hidden_size=hidden,
               depth=depth, num_heads=heads, class_dropout_prob=class_dropout, num_classes=num_classes,
               learn_sigma=learn_sigma, attn_backend=attention)


__all__ = ["DiT", "MODEL_SIZES", "BACKENDS", "build_model", "drop_labels"]
