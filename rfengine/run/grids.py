"""Sample grids written along a run: the EMA model's samples (one class per column), on rank 0, or on
every process when the EMA is sharded (its forward is a collective). Not essential: a grid that cannot
be written is a warning, and training goes on."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from rfengine import faults, parallel, storage
from rfengine.sample import generate, save_grid

log = logging.getLogger("rfengine")


def save_samples(cfg, dist, ema, shape, sharded: bool, step: int, out: Path) -> Path | None:
    """Collective under FSDP: the grid of step `step` as `<out>/samples/step_XXXXXXXX.png`, or None."""
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
    path = out / "samples" / f"step_{step:08d}.png"
    try:
        with faults.full_disk("fill_disk_grid", step, out):
            return save_grid(x, path, nrow=min(n, 10))
    except OSError as e:  # a grid is not essential: say so and go on
        error = e if isinstance(e, storage.WriteError) else storage.write_error(path, e)
        log.warning("sample grid not written: %s; training goes on", error)
        return None
