"""Helpers for tests that run the trainer in-process or under torchrun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from rfengine import config

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "model.arch=DiT-T/4", "train.batch_size=16", "train.log_every=1", "train.progress=false",
    "sample.steps=2", "sample.num_images=4", "optim.lr=1e-3", "train.ckpt_every=1000", "train.sample_every=1000",
]


def tiny_cfg(out_dir, *extra, config_file=None):
    return config.load(config_file, [*TINY, f"train.out_dir={out_dir}", *extra])


def read_metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def torchrun(nproc: int, *args: str, env: dict | None = None, timeout: int = 300,
             restarts: int = 0) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=nproc [--max-restarts=restarts] rfengine/train.py ...`. On a
    timeout the whole process group goes (the workers too, not only the agent), then TimeoutExpired."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", str(ROOT / "rfengine" / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def train_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m rfengine.train ...` in a fresh single process (one thread, like torchrun)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "rfengine.train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def set_args(*overrides: str) -> list[str]:
    """['--set', a, '--set', b, ...] for the CLI."""
    return [a for s in overrides for a in ("--set", s)]


def losses(out_dir) -> dict[int, tuple[float, float]]:
    """step -> (loss, grad_norm) from a run's metrics.jsonl."""
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read_metrics(out_dir)}


def tiny_vae(path, seed: int = 0, channels: tuple = (8, 8, 16, 16), layers_per_block: int = 1):
    """A diffusers AutoencoderKL with random weights saved to the folder `path` (returned): sd-vae-ft-ema's
    structure (four encoder/decoder blocks, 8x downsampling to 4 latent channels, scaling factor 0.18215),
    only tiny: `channels` per block (multiples of 4) and `layers_per_block`. Needs diffusers (the `dev`
    extra)."""
    import diffusers
    import torch
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=tuple(channels),
        layers_per_block=layers_per_block, latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.18215)
    vae.save_pretrained(path)
    return Path(path)
