"""Generation: draw samples from a velocity model with the flow samplers, and write image grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rfengine import storage
from rfengine.flow import DIFFUSIONS, LAST_STEPS, METHODS, integrate, with_cfg


@torch.no_grad()
def generate(model, *, shape: tuple[int, int, int], n: int, labels: torch.Tensor | None, method: str = "euler",
             steps: int = 50, cfg_scale: float = 1.0, shift: float = 1.0, seed: int = 0,
             device: torch.device | str = "cpu", null_class: int | None = None,
             noise: torch.Tensor | None = None, cfg_channels: int | None = None,
             cfg_interval: tuple[float, float] | None = None, generator: torch.Generator | None = None,
             stats: dict | None = None, **sampler) -> torch.Tensor:
    """n samples (n, C, H, W) at t = 1 from fixed noise (seeded, or `noise` itself), for labels (n,) or None.
    Guidance: `cfg_scale` on the first `cfg_channels` channels (None: all) for t in `cfg_interval` (None:
    every step). `sampler` holds the SDE/dopri5 options of `rfengine.flow.integrate` (diffusion,
    diffusion_norm, last_step, last_step_size, sample_eps, atol, rtol); the SDE draws its noise from
    `generator` (default: one on the samples' device seeded with seed + 1)."""
    if noise is None:
        noise = torch.randn((n, *shape), generator=torch.Generator(device="cpu").manual_seed(seed))
    x = noise.to(device)
    fn = model
    if labels is not None and cfg_scale != 1.0:
        fn = with_cfg(model, cfg_scale, null_class, channels=cfg_channels, interval=cfg_interval)
    if method == "sde" and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(seed + 1)
    return integrate(fn, x, labels, steps=steps, method=method, shift=shift, generator=generator, stats=stats,
                     **sampler)


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
    # complete or absent (a full disk leaves no half-written PNG); a failure is a storage.WriteError
    return storage.write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))


# ---------------------------------------------------------------------------------------------
# Loading a trained model, and the command line: python -m rfengine.sample
# ---------------------------------------------------------------------------------------------

def sample_stem(a) -> str:
    """The output name: every setting that changes the samples."""
    stem = f"samples_{a.weights}_{a.method}{a.steps}_cfg{a.cfg:g}"
    if a.cfg != 1.0 and a.cfg_channels is not None:
        stem += f"_ch{a.cfg_channels}"
    if a.cfg != 1.0 and a.cfg_interval is not None:
        stem += f"_int{a.cfg_interval[0]:g}-{a.cfg_interval[1]:g}"
    if a.method == "sde":
        stem += f"_{a.diffusion}{a.diffusion_norm:g}_last{a.last_step}{a.last_step_size:g}"
    if a.method == "dopri5":
        stem += f"_atol{a.atol:g}_rtol{a.rtol:g}"
    if a.shift != 1.0:
        stem += f"_shift{a.shift:g}"
    return stem + f"_n{a.count}_seed{a.seed}"


def sample_main(argv=None) -> int:
    import argparse
    import json
    from tqdm import tqdm
    from rfengine import cli, parallel
    # No option may be a prefix of a torchrun option (--run-path, --numa-binding, ...): torchrun's
    # parser rejects an ambiguous prefix anywhere on the command line, even after the script.
    p = argparse.ArgumentParser(description="Sample a trained rfengine model: PNG grid + .npz (uint8 NHWC arr_0).")
    p.add_argument("--run-dir", dest="run", help="run folder (its newest checkpoint)")
    p.add_argument("--ckpt", help="a checkpoint (.pt file or sharded folder), an exported .safetensors, or released "
                                  "SiT/DiT weights (then --config says which model they fit)")
    p.add_argument("--config", help="the model released weights fit (model.arch, model.learn_sigma, data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a --config key (repeatable)")
    p.add_argument("--vae", help="a latent model's VAE (diffusers AutoencoderKL: hub name or folder): the latents "
                                 "are decoded with it (divided by data.scale_factor) into images")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"])
    p.add_argument("--method", default="euler", choices=list(METHODS),
                   help="euler/heun: fixed grid; sde: SiT's Euler-Maruyama sampler; dopri5: adaptive ODE (torchdiffeq)")
    p.add_argument("--steps", type=int, default=50, help="model evaluations (sde: as SiT's --num-sampling-steps)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--cfg-channels", type=int, default=None,
                   help="guide only the first N channels, the others conditional (3: DiT/SiT's published numbers)")
    p.add_argument("--cfg-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"), default=None,
                   help="guide only for t in [T_LO, T_HI] (t = 0 noise, 1 data); one model call outside it")
    p.add_argument("--diffusion", default="sigma", choices=list(DIFFUSIONS), help="sde: the diffusion form w(t)")
    p.add_argument("--diffusion-norm", type=float, default=1.0, help="sde: w(t)'s scale")
    p.add_argument("--last-step", default="mean", choices=list(LAST_STEPS), help="sde: the last step's kind")
    p.add_argument("--last-step-size", type=float, default=0.04, help="sde: the last step's size")
    p.add_argument("--sample-eps", type=float, default=0.0, help="sde: the start time for SBDM (w is infinite at 0)")
    p.add_argument("--atol", type=float, default=1e-6, help="dopri5: absolute tolerance (SiT's default)")
    p.add_argument("--rtol", type=float, default=1e-3, help="dopri5: relative tolerance (SiT's default)")
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--count", type=int, default=1000, help="images to generate")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: <run>/eval)")
    a = p.parse_args(argv)

    def body():
        dist = parallel.init_distributed("auto")
        from rfengine import config as config_lib, weights
        path = weights.resolve(a.run, a.ckpt)
        given = config_lib.load(a.config, a.overrides) if (a.config or a.overrides) else None
        model, cfg, shape, _ = weights.load_model(path, a.weights, given)
        model.to(dist.device)
        vae = None
        if a.vae:
            from rfengine.data.vae import decode, load_vae
            vae = load_vae(a.vae, None, dist.device)
        elif cfg.data.name == "latents":
            raise ValueError(f"this model generates VAE latents ({shape[0]} channels); pass --vae NAME_OR_FOLDER, the "
                             f"VAE its latents were made with (its config says data.vae: {cfg.data.vae or '?'!s}), "
                             "to decode them into images")
        mine = list(range(dist.rank, a.count, dist.world))  # sample i's noise depends on (seed, i) only
        sampler = {k: getattr(a, k) for k in ("diffusion", "diffusion_norm", "last_step", "last_step_size",
                                              "sample_eps", "atol", "rtol")}
        stats, nfe = {}, []
        imgs, labels = [], []
        chunks = [mine[i:i + a.batch] for i in range(0, len(mine), a.batch)]
        for idx in tqdm(chunks, desc="sample", disable=not dist.is_main):
            lab = None
            if model.num_classes > 0:
                lab = torch.tensor(idx, device=dist.device) % model.num_classes
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(a.seed * 10**9 + i))
                                 for i in idx])
            # the SDE's noise: one stream per chunk, from (seed, the chunk's first sample)
            gen = torch.Generator(device=dist.device).manual_seed(a.seed * 10**9 + 5 * 10**8 + idx[0])
            x = generate(model, shape=shape, n=len(idx), labels=lab, method=a.method, steps=a.steps,
                         cfg_scale=a.cfg, shift=a.shift, device=dist.device, null_class=model.null_class,
                         noise=noise, cfg_channels=a.cfg_channels, cfg_interval=a.cfg_interval, generator=gen,
                         stats=stats, **sampler)
            nfe.append(stats.get("nfe"))
            if vae is not None:
                x = decode(vae, x, cfg.data.scale_factor)
            imgs.append(to_uint8(x))
            labels.append(np.asarray(idx) % model.num_classes if model.num_classes else np.zeros(len(idx), int))
        parts = parallel.all_gather_object((np.concatenate(imgs), np.concatenate(labels), mine))
        if dist.is_main:
            order = np.argsort(np.concatenate([m for _, _, m in parts]))
            arr = np.concatenate([x for x, _, _ in parts])[order]
            lab = np.concatenate([y for _, y, _ in parts])[order]
            out = Path(a.out) if a.out else (Path(a.run) if a.run else path.parent.parent) / "eval"
            out.mkdir(parents=True, exist_ok=True)
            stem = sample_stem(a)
            np.savez(out / f"{stem}.npz", arr_0=arr, labels=lab)
            grid = torch.from_numpy(arr[:100]).permute(0, 3, 1, 2).float() / 127.5 - 1
            save_grid(grid, out / f"{stem}.png", nrow=10)
            meta = {"checkpoint": str(path), "weights": a.weights, "method": a.method, "steps": a.steps,
                    "cfg": a.cfg, "cfg_channels": a.cfg_channels, "cfg_interval": a.cfg_interval, "shift": a.shift,
                    "num": a.count, "seed": a.seed, "world": dist.world, "batch": a.batch, "vae": a.vae,
                    "nfe_per_batch": nfe if a.method == "dopri5" else None,
                    **({k: sampler[k] for k in ("diffusion", "diffusion_norm", "last_step", "last_step_size",
                                                "sample_eps")} if a.method == "sde" else {}),
                    **({k: sampler[k] for k in ("atol", "rtol")} if a.method == "dopri5" else {})}
            (out / f"{stem}.json").write_text(json.dumps(meta, indent=1))
            print(f"wrote {out / (stem + '.npz')} ({arr.shape}, uint8 NHWC) and a grid")
    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(sample_main())
