"""Generation: draw samples from a velocity model with the flow samplers, and write image grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rfengine.flow import integrate, with_cfg


@torch.no_grad()
def generate(model, *, shape: tuple[int, int, int], n: int, labels: torch.Tensor | None, method: str = "euler",
             steps: int = 50, cfg_scale: float = 1.0, shift: float = 1.0, seed: int = 0,
             device: torch.device | str = "cpu", null_class: int | None = None) -> torch.Tensor:
    """n samples (n, C, H, W) at t = 1 from fixed noise (seeded), for labels (n,) or None."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((n, *shape), generator=g).to(device)
    fn = model
    if labels is not None and cfg_scale != 1.0:
        fn = with_cfg(model, cfg_scale, null_class)
    return integrate(fn, x, labels, steps=steps, method=method, shift=shift)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8. Channels beyond 3 are dropped; 2 becomes 1."""
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1]
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(x: torch.Tensor, path: str | Path, nrow: int = 8, upscale: int | None = None) -> Path:
    """Tile images (N, C, H, W) in [-1, 1] into one PNG; small images are upscaled (nearest) to be seen."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    pad = 2
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = imgs[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    upscale = upscale or max(1, 64 // max(h, w))
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
