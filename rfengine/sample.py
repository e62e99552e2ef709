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
             device: torch.device | str = "cpu", null_class: int | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """n samples (n, C, H, W) at t = 1 from fixed noise (seeded, or `noise` itself), for labels (n,) or None."""
    if noise is None:
        noise = torch.randn((n, *shape), generator=torch.Generator(device="cpu").manual_seed(seed))
    x = noise.to(device)
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
    from rfengine import checkpoint
    # complete or absent (a full disk leaves no half-written PNG); a failure is a storage.WriteError
    return checkpoint.write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))


# ---------------------------------------------------------------------------------------------
# Loading a trained model, and the command line: python -m rfengine.sample
# ---------------------------------------------------------------------------------------------

def load_model(ckpt_path: str | Path, weights: str = "ema"):
    """(model in eval mode, config, data shape (C, H, W)) from a training checkpoint (a `.pt` file or
    a sharded checkpoint folder, read on one process) or an exported `.safetensors` file; `weights`
    is 'ema' or 'raw'. The shape and class count come from the checkpoint (older checkpoints: from
    the position embedding, assuming square inputs)."""
    return load_model_with_meta(ckpt_path, weights)[:3]


def load_model_with_meta(ckpt_path: str | Path, weights: str = "ema"):
    """`load_model` plus what the file says besides the weights (step, code_version, ...), read once."""
    from rfengine import checkpoint, config as config_lib
    from rfengine.models import build_model
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights: expected 'ema' or 'raw', got {weights!r}")
    path = Path(ckpt_path)
    key = "ema" if weights == "ema" else "model"
    if path.suffix == ".safetensors":
        state, meta = checkpoint.load_safetensors(path)
        if meta.get("weights", "ema") != weights:
            raise ValueError(f"{path} holds the {meta.get('weights')} weights, not {weights!r}")
    else:
        meta = checkpoint.load(path)
        state = None if "sharded" in meta else checkpoint.strip_prefixes(meta[key])
    cfg = config_lib.from_dict(meta["config"])
    if "data_shape" in meta:
        shape, num_classes = tuple(meta["data_shape"]), int(meta["num_classes"])
    else:
        hidden, c, p, _ = state["x_embedder.proj.weight"].shape
        side = int(round(state["pos_embed"].shape[1] ** 0.5)) * p
        shape = (c, side, side)
        rows = state["y_embedder.embedding_table.weight"].shape[0] if "y_embedder.embedding_table.weight" in state else 0
        num_classes = max(rows - int(cfg.model.class_dropout > 0), 0)
    model = build_model(cfg.model.arch, in_channels=shape[0], input_size=shape[1:], num_classes=num_classes,
                        learn_sigma=cfg.model.learn_sigma, class_dropout=cfg.model.class_dropout,
                        attention=cfg.model.attention)
    if state is None:  # sharded: read the whole tensors into this one-process model
        state = checkpoint.load_sharded(meta["sharded"], {key: model.state_dict()})[key]
    checkpoint.load_model_state(model, state, f"checkpoint {ckpt_path} ({weights})")
    return model.eval(), cfg, shape, meta


def _resolve_checkpoint(run: str | None, ckpt: str | None) -> Path:
    from rfengine import checkpoint
    if bool(run) == bool(ckpt):
        raise ValueError("pass exactly one of --run-dir DIR or --ckpt PATH")
    if ckpt:
        return Path(ckpt)
    found = checkpoint.list_checkpoints(Path(run) / "checkpoints")
    if not found:
        raise FileNotFoundError(f"no checkpoint in {Path(run) / 'checkpoints'}")
    return found[-1][1]


def sample_main(argv=None) -> int:
    import argparse
    import json
    from tqdm import tqdm
    from rfengine import cli, parallel
    # No option may be a prefix of a torchrun option (--run-path, --numa-binding, ...): torchrun's
    # parser rejects an ambiguous prefix anywhere on the command line, even after the script.
    p = argparse.ArgumentParser(description="Sample a trained rfengine model: PNG grid + .npz (uint8 NHWC arr_0).")
    p.add_argument("--run-dir", dest="run", help="run folder (its newest checkpoint)")
    p.add_argument("--ckpt", help="a checkpoint (.pt file or sharded folder) or exported .safetensors")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"])
    p.add_argument("--method", default="euler", choices=["euler", "heun"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--count", type=int, default=1000, help="images to generate")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: <run>/eval)")
    a = p.parse_args(argv)

    def body():
        dist = parallel.init_distributed("auto")
        path = _resolve_checkpoint(a.run, a.ckpt)
        model, cfg, shape = load_model(path, a.weights)
        model.to(dist.device)
        mine = list(range(dist.rank, a.count, dist.world))  # sample i's noise depends on (seed, i) only
        imgs, labels = [], []
        chunks = [mine[i:i + a.batch] for i in range(0, len(mine), a.batch)]
        for idx in tqdm(chunks, desc="sample", disable=not dist.is_main):
            lab = None
            if model.num_classes > 0:
                lab = torch.tensor(idx, device=dist.device) % model.num_classes
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(a.seed * 10**9 + i))
                                 for i in idx])
            x = generate(model, shape=shape, n=len(idx), labels=lab, method=a.method, steps=a.steps,
                         cfg_scale=a.cfg, shift=a.shift, device=dist.device, null_class=model.null_class,
                         noise=noise)
            imgs.append(to_uint8(x))
            labels.append(np.asarray(idx) % model.num_classes if model.num_classes else np.zeros(len(idx), int))
        parts = parallel.all_gather_object((np.concatenate(imgs), np.concatenate(labels), mine))
        if dist.is_main:
            order = np.argsort(np.concatenate([m for _, _, m in parts]))
            arr = np.concatenate([x for x, _, _ in parts])[order]
            lab = np.concatenate([y for _, y, _ in parts])[order]
            out = Path(a.out) if a.out else (Path(a.run) if a.run else path.parent.parent) / "eval"
            out.mkdir(parents=True, exist_ok=True)
            stem = f"samples_{a.weights}_{a.method}{a.steps}_cfg{a.cfg:g}_n{a.count}_seed{a.seed}"
            np.savez(out / f"{stem}.npz", arr_0=arr, labels=lab)
            grid = torch.from_numpy(arr[:100]).permute(0, 3, 1, 2).float() / 127.5 - 1
            save_grid(grid, out / f"{stem}.png", nrow=10)
            meta = {"checkpoint": str(path), "weights": a.weights, "method": a.method, "steps": a.steps,
                    "cfg": a.cfg, "shift": a.shift, "num": a.count, "seed": a.seed, "world": dist.world}
            (out / f"{stem}.json").write_text(json.dumps(meta, indent=1))
            print(f"wrote {out / (stem + '.npz')} ({arr.shape}, uint8 NHWC) and a grid")
    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(sample_main())
