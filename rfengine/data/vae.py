"""The VAE of latent data sets (a diffusers AutoencoderKL, optional): encoding for latent extraction,
decoding for sampling a latent model into images, and the VAE's identity by content (its architecture
and a hash of its weights), so that two copies of one VAE in different places are known to be the same."""
from __future__ import annotations

import hashlib

import torch


def load_vae(name: str, subfolder: str | None, device: torch.device | str, offline: bool = False):
    """An AutoencoderKL from a hub name or a local folder, in eval mode on `device`; a clear error when
    diffusers is missing or the name does not load. `offline`: never reach the network (a hub name
    loads only from the local cache)."""
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as e:
        raise ValueError("the VAE needs diffusers: pip install -e \".[latents]\"") from e
    try:
        # (low_cpu_mem_usage needs `accelerate`; without it diffusers warns on every load, for a 0.3 GB model)
        vae = AutoencoderKL.from_pretrained(name, subfolder=subfolder, local_files_only=offline, low_cpu_mem_usage=False)
    except Exception as e:  # a wrong path, no network for a hub name, not a VAE folder
        raise ValueError(f"--vae {name!r}: cannot load an AutoencoderKL ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from e
    return vae.to(device).eval().requires_grad_(False)


def vae_identity(vae) -> dict:
    """What a VAE is, whatever its folder or file format: {'config': its architecture (the public keys of
    its diffusers config), 'sha256': SHA-256 over its weights (every state-dict tensor, in name order:
    name, dtype, shape and bytes)}."""
    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(vae.config).items()
              if not k.startswith("_")}
    return {"config": config, "sha256": h.hexdigest()}


def same_vae(a: dict, b: dict) -> bool:
    """Whether two `vae_identity` records name one VAE: the same weights, and no architecture key that
    both configs hold differs (diffusers versions add keys with defaults)."""
    shared = set(a["config"]) & set(b["config"])
    return a["sha256"] == b["sha256"] and all(a["config"][k] == b["config"][k] for k in shared)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) float32 from scaled latents (N, 4, h, w): vae.decode(latents /
    scale_factor), as DiT/SiT's sample.py does."""
    return vae.decode(latents.to(next(vae.parameters()).dtype) / scale_factor).sample.float().clamp(-1, 1)
