"""A run's folder and its lifetime: the pre-flight check before anything is created, the folders, the log
file, the resolved config (its schedule pinned as steps), and the SIGTERM/SIGINT handlers, installed and
restored in one place."""
from __future__ import annotations

import dataclasses
import logging
import signal
from pathlib import Path

import torch

from rfengine import checkpoint, config as config_lib, parallel
from rfengine.run.build import build_model
from rfengine.telemetry import setup_logging

log = logging.getLogger("rfengine")


def prepare(cfg, dist: parallel.Dist, out: Path, shape: tuple[int, int, int], num_classes: int,
            fresh: bool) -> None:
    """Collective: refuse to start a `fresh` run (not resuming) in a folder that holds another run, or
    any run when its folder cannot hold what it writes (its checkpoints, the export, the sample grids);
    then make the folders and start the log."""
    if fresh:
        refuse_used_folder(out)
    with torch.device("meta"):
        model = build_model(cfg, shape, num_classes, "meta")
    c, h, w = shape
    side = max(h, w, 64)  # grids are upscaled to at least 64 pixels; PNG is at most the raw bytes
    if cfg.data.name == "latents":  # decoded through the VAE into RGB images of data.image_size
        c, side = 3, max(cfg.data.image_size, 64)
    grids = cfg.train.steps // cfg.train.sample_every + 1
    grid_bytes = grids * cfg.sample.num_images * (3 if c >= 3 else 1) * side * side
    checkpoint.preflight(out, model, dist.world, cfg.train.keep_ckpts, grid_bytes, f"{grids} sample grids")
    if dist.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
    parallel.barrier()
    setup_logging(dist.is_main, out)
    log.info("rfengine: %d process(es), device %s", dist.world, dist.device)


def refuse_used_folder(out: Path) -> None:
    """Collective: a ValueError on every process when `out` holds another run's checkpoints (or a crashed
    writer's leftovers) or metrics. A fresh run there would mix with it: metrics.jsonl restarted, and the
    old run's later checkpoints outranking the new ones in pruning and in a later `--resume auto`."""
    folder = out / "checkpoints"
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0:
        held.append("metrics.jsonl")
    used = [h for h in parallel.all_gather_object(held) if h]  # every process refuses, or none does
    if used:
        raise ValueError(f"train.out_dir {out} already holds a run ({', '.join(used[0][-3:])}); continue it with "
                         "--resume auto, or start this run in a fresh train.out_dir")


def save_config(cfg, schedule: dict, out: Path) -> None:
    """The resolved config (every default filled in, the switch and ramp as steps) as `config.yaml`."""
    pinned = dataclasses.replace(cfg.objective, start=float(schedule["start"]), ramp=float(schedule["ramp"]))
    config_lib.save(dataclasses.replace(cfg, objective=pinned), out / "config.yaml")


class StopSignals:
    """SIGTERM / SIGINT ask the loop to finish the step, checkpoint and exit cleanly. A context manager:
    the handlers live exactly as long as the `with` block, whatever it raises. `requested` is this
    process's pending request: only the handler sets it, nothing clears it; the trainer agrees it over
    every process at each step and acts on the agreed value alone."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def _handle(self, signum, frame):
        self.requested = True
        log.warning("received %s: finishing this step, then checkpointing", signal.Signals(signum).name)
