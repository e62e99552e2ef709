"""Generation: draw samples from a velocity model with the flow samplers, write image grids, and the
sampling command line (`python -m rfengine.sample`), which writes ADM's .npz for FID at any count:

    python -m rfengine.sample --run-dir runs/x --count 50000 --method sde --steps 250 --cfg 1.5 --cfg-channels 3 \
        --vae stabilityai/sd-vae-ft-ema
    torchrun --nproc_per_node=8 -m rfengine.sample ...   # the same samples, chunks split across processes

Sample i's noise and class label depend on (seed, i) only, so any process count gives the same images;
each chunk is written to disk as it is made (`rfengine.sample_shards`), a killed run resumes with the same
command, and rank 0 merges the chunks into `<out>/<stem>.npz` without holding them all.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rfengine import storage
from rfengine.flow import DIFFUSIONS, FIXED_GRID, LAST_STEPS, METHODS, integrate, with_cfg

log = logging.getLogger("rfengine")
# Images the VAE decodes at a time: its decoder's activations at full resolution are many times the
# image, so a large --batch is decoded in parts (DiT's sample_ddp.py decodes 32 per process at once).
DECODE_BATCH = 32


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
# The command line: python -m rfengine.sample
# ---------------------------------------------------------------------------------------------

def sample_stem(a, step: int | None = None) -> str:
    """The output name: every setting that changes the samples (`step`: the checkpoint's, when it has one)."""
    stem = f"samples_{a.weights}" + (f"_step{step}" if step is not None else "") + f"_{a.method}{a.steps}_cfg{a.cfg:g}"
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
    if a.labels != "uniform":
        stem += f"_{a.labels}"
    return stem + f"_n{a.count}_seed{a.seed}"


def output_folder(run: str | None, weights_path: Path, out: str | None) -> Path:
    """Where samples go: `out`, else `<run>/eval` for a run folder, else the folder holding the weights."""
    if out:
        return Path(out)
    return Path(run) / "eval" if run else Path(weights_path).parent


def parse_args(argv=None):
    import argparse
    # No option may be a prefix of a torchrun option (--run-path, --numa-binding, ...): torchrun's
    # parser rejects an ambiguous prefix anywhere on the command line, even after the script.
    p = argparse.ArgumentParser(
        description="Sample a trained rfengine model (or released SiT/DiT weights) into ADM's .npz (arr_0 uint8 "
                    "NHWC, arr_1 labels), a PNG grid and a .json of the settings. Under torchrun every process "
                    "writes its own chunks; a run started again with the same command skips the chunks written.")
    p.add_argument("--run-dir", dest="run", help="run folder (its newest checkpoint); output in <run>/eval")
    p.add_argument("--ckpt", help="a checkpoint (.pt file or sharded folder), an exported .safetensors, or released "
                                  "SiT/DiT weights (then --config says which model they fit); output beside it")
    p.add_argument("--config", help="the model released weights fit (model.arch, model.learn_sigma, data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a --config key (repeatable)")
    p.add_argument("--vae", help="a latent model's VAE (diffusers AutoencoderKL: hub name or folder): the latents "
                                 "are decoded with it (divided by data.scale_factor) into images; default: the "
                                 "config's data.vae (a run's own config records the VAE it trained with)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"])
    p.add_argument("--method", default="euler", choices=list(METHODS),
                   help="euler/heun: fixed grid; dpmpp2m: DPM-Solver++(2M) for velocity models; ab2: "
                        "Adams-Bashforth 2 (both multistep, one model call a step); sde: SiT's Euler-Maruyama "
                        "sampler; dopri5: adaptive ODE (torchdiffeq)")
    p.add_argument("--steps", type=int, default=50,
                   help="steps on the grid; model calls per sample: --steps, twice that for heun (sde: as SiT's "
                        "--num-sampling-steps)")
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
    p.add_argument("--shift", type=float, default=1.0,
                   help="fixed-grid samplers: time shift of the grid (SD3's form; > 1 spends more steps at high "
                        "noise, 1 = uniform)")
    p.add_argument("--labels", default="uniform", choices=["uniform", "balanced"],
                   help="class labels: uniform: independent uniform draws, as DiT/SiT/ADM sample for FID-50K; "
                        "balanced: sample i has class i %% num_classes")
    p.add_argument("--count", type=int, default=1000, help="images to generate (50000 for FID-50K)")
    p.add_argument("--batch", type=int, default=250,
                   help="samples per model batch and per chunk file; a restart must use the same value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: <run>/eval, or the folder of --ckpt)")
    a = p.parse_args(argv)
    if a.count < 1 or a.batch < 1:
        p.error("--count and --batch must be >= 1")
    if not (math.isfinite(a.shift) and a.shift > 0):  # a NaN or infinite shift makes every grid time NaN
        p.error(f"--shift must be finite and > 0, got {a.shift:g}")
    if a.shift != 1.0 and a.method not in FIXED_GRID:
        p.error(f"--shift: only the fixed-grid samplers ({', '.join(FIXED_GRID)}) shift their grid; --method "
                f"{a.method} would ignore --shift {a.shift:g}")
    return a


def _settings(a, path: Path, step: int | None, vae_id: str | None) -> dict:
    """Everything that decides the samples (and the chunking): what a restart must match."""
    sampler = {"sde": ("diffusion", "diffusion_norm", "last_step", "last_step_size", "sample_eps"),
               "dopri5": ("atol", "rtol")}.get(a.method, ())
    return {"checkpoint": str(Path(path).resolve()), "step": step, "weights": a.weights, "method": a.method,
            "steps": a.steps, "cfg": a.cfg, "cfg_channels": a.cfg_channels, "cfg_interval": a.cfg_interval, "shift": a.shift,
            "labels": a.labels, "num": a.count, "seed": a.seed, "batch": a.batch, "vae_sha256": vae_id,
            **{k: getattr(a, k) for k in sampler}}


def _complete(npz: Path, meta: Path, settings: dict) -> bool:
    """Whether `npz` exists with metadata saying it was made with `settings`; other settings: an error."""
    if not (npz.is_file() and meta.is_file()):
        return False
    try:
        made = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    changed = sorted(k for k in settings if made.get(k) != settings[k])
    if changed:
        raise ValueError(f"{npz} exists, made with other settings ({', '.join(changed)} differ); delete it or "
                         "pass another --out")
    return True


def _chunk(model, vae, cfg, shape, a, rows: range, labels, device, sampler: dict):
    """One chunk's images (n, H, W, C) uint8 and its model-evaluation count (adaptive samplers)."""
    lab = None if labels is None else torch.from_numpy(labels[rows.start:rows.stop]).to(device)
    # sample i's noise depends on (seed, i) only: the same images on any number of processes
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(a.seed * 10**9 + i))
                         for i in rows])
    # the SDE's noise: one stream per chunk, from (seed, the chunk's first sample)
    gen = torch.Generator(device=device).manual_seed(a.seed * 10**9 + 5 * 10**8 + rows.start)
    stats = {}
    x = generate(model, shape=shape, n=len(rows), labels=lab, method=a.method, steps=a.steps, cfg_scale=a.cfg,
                 shift=a.shift, device=device, null_class=model.null_class, noise=noise,
                 cfg_channels=a.cfg_channels, cfg_interval=a.cfg_interval, generator=gen, stats=stats, **sampler)
    if vae is None:
        return to_uint8(x), stats.get("nfe")
    from rfengine.data.vae import decode
    # decoded and made uint8 a part at a time: the chunk's float images never exist all at once
    return np.concatenate([to_uint8(decode(vae, z, cfg.data.scale_factor)) for z in x.split(DECODE_BATCH)]), \
        stats.get("nfe")


def sample_main(argv=None) -> int:
    from rfengine import cli
    a = parse_args(argv)
    return cli.run(lambda: _sample(a))


def _sample(a) -> Path:
    """The sampling run of the parsed command line `a`; returns the merged .npz (on every process)."""
    from tqdm import tqdm

    from rfengine import config as config_lib, faults, parallel, sample_shards as shards, weights
    from rfengine.telemetry import setup_logging
    dist = parallel.init_distributed("auto")
    setup_logging(dist.is_main)
    path = weights.resolve(a.run, a.ckpt)
    given = config_lib.load(a.config, a.overrides) if (a.config or a.overrides) else None
    model, cfg, shape, meta = weights.load_model(path, a.weights, given)
    model.to(dist.device)
    vae = vae_id = None
    vae_name = a.vae
    if not vae_name and cfg.data.name == "latents":
        if not cfg.data.vae:
            raise ValueError(f"this model generates VAE latents ({shape[0]} channels) and its config names no "
                             "data.vae; pass --vae NAME_OR_FOLDER, the VAE its latents were made with, to decode "
                             "them into images")
        vae_name = cfg.data.vae
        log.info("decoding the latents with the config's data.vae, %s (--vae chooses another)", vae_name)
    if vae_name:
        from rfengine.data.vae import load_vae, vae_identity
        try:
            vae = load_vae(vae_name, None, dist.device)
        except ValueError as e:
            if a.vae:
                raise
            raise ValueError(f"the config's data.vae does not load: {e}; pass --vae NAME_OR_FOLDER, the VAE the "
                             "latents were made with (a local folder on a machine without network)") from None
        vae_id = vae_identity(vae)["sha256"]
    step = int(meta["step"]) if meta.get("step", -1) >= 0 else None
    out = output_folder(a.run, path, a.out)
    stem = sample_stem(a, step)
    npz, meta_path, parts = out / f"{stem}.npz", out / f"{stem}.json", out / f"{stem}.parts"
    settings = _settings(a, path, step, vae_id)
    if _complete(npz, meta_path, settings):
        log.info("%s is complete already (its .json records the same settings); nothing to do", npz)
        return npz
    plan = shards.chunks(a.count, a.batch)
    todo, error = None, None
    if dist.is_main:
        try:
            todo = shards.open_parts(parts, settings, len(plan))
        except (ValueError, OSError) as e:
            error = e
    todo, message = parallel.broadcast_object((todo, None if error is None else str(error)))
    if error is not None:
        raise error
    if message is not None:
        raise ValueError(message)
    if len(todo) < len(plan):
        log.info("%d of %d chunks are written already (%s); making the other %d", len(plan) - len(todo), len(plan),
                 parts, len(todo))
    labels = shards.class_labels(a.count, model.num_classes, a.seed, a.labels) if model.num_classes else None
    sampler = {k: getattr(a, k) for k in ("diffusion", "diffusion_norm", "last_step", "last_step_size",
                                          "sample_eps", "atol", "rtol")}
    mine = todo[dist.rank::dist.world]
    for k, j in enumerate(tqdm(mine, desc="sample", unit="chunk", disable=not dist.is_main)):
        rows = plan[j]
        images, nfe = _chunk(model, vae, cfg, shape, a, rows, labels, dist.device, sampler)
        shards.write_chunk(parts, j, images, None if labels is None else labels[rows.start:rows.stop], nfe)
        faults.maybe_crash("sample_chunk", k + 1)
    parallel.barrier()  # every chunk is written
    if dist.is_main:
        first, nfe = shards.merge(parts, plan, npz, labels is not None)
        save_grid(torch.from_numpy(first).permute(0, 3, 1, 2).float() / 127.5 - 1, out / f"{stem}.png", nrow=10)
        storage.write_json(meta_path, {**settings, "world": dist.world, "vae": vae_name,
                                       "nfe_per_batch": nfe if a.method == "dopri5" else None})
        shards.remove_parts(parts)
        log.info("wrote %s (%d x %s uint8 NHWC%s), a grid and the settings (.json)", npz, a.count,
                 "x".join(map(str, first.shape[1:])), ", labels in arr_1" if labels is not None else "")
    return npz


if __name__ == "__main__":
    raise SystemExit(sample_main())
