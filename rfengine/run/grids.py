"""Sample grids written along a run: the EMA model's samples (one class per column), on rank 0, or on
every process when the EMA is sharded (its forward is a collective). A latent run's samples are decoded
into images through the VAE its latents were made with, when that VAE loads on this machine; else the
grid shows the raw latents, and the log says so once. Not essential: a grid that cannot be written is
a warning, and training goes on."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from rfengine import faults, parallel, storage
from rfengine.sample import generate, save_grid

log = logging.getLogger("rfengine")


class LatentDecoder:
    """Latents (N, C, h, w), scaled as the model sees them, to images (N, 3, H, W) in [-1, 1] through the VAE
    that made them: the first of `names` that loads without the network and, when `identity` (the VAE by
    content, `vae.vae_identity`) is known, has its weights. Loaded once, on first use, on the CPU, and on
    the samples' device only while decoding. Without one, the latents come back as they are."""

    PART = 4  # images decoded at a time: the decoder's activations at full resolution are large

    def __init__(self, names: list[str], identity: dict | None, scale_factor: float):
        self.names, self.identity, self.scale = names, identity, scale_factor
        self.vae, self.tried = None, False

    def _load(self):
        from rfengine.data.vae import load_vae, same_vae, vae_identity
        why = []
        for name in self.names:
            try:
                vae = load_vae(name, None, "cpu", offline=True)
            except ValueError as e:
                why.append(str(e))
                continue
            if self.identity is not None and not same_vae(vae_identity(vae), self.identity):
                why.append(f"{name!r} is not the VAE the latents were made with (other weights)")
                continue
            log.info("sample grids: latents decoded through the VAE %s", name)
            return vae
        log.warning("sample grids of this latent run show raw latents (channels 0-2 as RGB), not images: no VAE "
                    "that made them loads here (%s)", "; ".join(why) or "none named")
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tried:
            self.vae, self.tried = self._load(), True
        if self.vae is None:
            return x
        from rfengine.data.vae import decode
        try:
            self.vae.to(x.device)
            return torch.cat([decode(self.vae, z, self.scale) for z in x.split(self.PART)])
        except RuntimeError as e:  # out of device memory beside training: the grid is not essential
            log.warning("sample grid: VAE decoding failed (%s); this grid shows raw latents", str(e).splitlines()[0])
            return x
        finally:
            self.vae.to("cpu")


def latent_decoder(dataset) -> LatentDecoder | None:
    """The grids' decoder of a latent data set (`LatentShardDataset`); None for any other data set."""
    if not hasattr(dataset, "vae_names"):
        return None
    return LatentDecoder(dataset.vae_names, dataset.vae_identity, dataset.scale)


def save_samples(cfg, dist, ema, shape, sharded: bool, step: int, out: Path,
                 decoder: LatentDecoder | None = None) -> Path | None:
    """Collective under FSDP: the grid of step `step` as `<out>/samples/step_XXXXXXXX.png`, or None. A latent
    run's samples go through `decoder` (rank 0)."""
    if not (dist.is_main or sharded):  # a sharded EMA needs every process for a forward
        return None
    s = cfg.sample
    n = s.num_images
    labels = None
    if ema.num_classes > 0:
        labels = torch.arange(n, device=dist.device) % ema.num_classes
    x = generate(ema, shape=shape, n=n, labels=labels, method=s.method, steps=s.steps, cfg_scale=s.cfg_scale,
                 shift=s.shift, seed=cfg.train.seed, device=dist.device, null_class=ema.null_class)
    parallel.reshard(ema)  # else the EMA's root stays gathered, and the next EMA update meets full tensors
    if not dist.is_main:
        return None
    if decoder is not None:
        x = decoder(x)
    path = out / "samples" / f"step_{step:08d}.png"
    try:
        with faults.full_disk("fill_disk_grid", step, out):
            return save_grid(x, path, nrow=min(n, 10))
    except OSError as e:  # a grid is not essential: say so and go on
        error = e if isinstance(e, storage.WriteError) else storage.write_error(path, e)
        log.warning("sample grid not written: %s; training goes on", error)
        return None
