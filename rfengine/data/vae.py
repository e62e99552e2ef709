"""The VAE of latent data sets (a diffusers AutoencoderKL, optional): encoding for latent extraction,
decoding for sampling a latent model into images."""
from __future__ import annotations

import torch


def load_vae(name: str, subfolder: str | None, device: torch.device):
    """An AutoencoderKL from a hub name or a local folder, in eval mode on `device`; a clear error when
    diffusers is missing or the name does not load."""
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as e:
        raise ValueError("the VAE needs diffusers: pip install -e \".[latents]\"") from e
    try:
        vae = AutoencoderKL.from_pretrained(name, subfolder=subfolder)
    except Exception as e:  # a wrong path, no network for a hub name, not a VAE folder
        raise ValueError(f"--vae {name!r}: cannot load an AutoencoderKL ({type(e).__name__}: {e})") from e
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) from scaled latents (N, 4, h, w): vae.decode(latents/scale_factor),
    as DiT/SiT's sample.py does."""
    return vae.decode(latents.to(next(vae.parameters()).dtype) / scale_factor).sample.float().clamp(-1, 1)
