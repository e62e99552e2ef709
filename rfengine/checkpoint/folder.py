"""The run's checkpoint folder: names, discovery, leftovers of a crashed writer, and the pre-flight check
that the folder can hold the checkpoints a run will write (pruning, which reads them: `reading.prune`)."""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import torch

from rfengine import storage

log = logging.getLogger("rfengine")
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")


def checkpoint_path(folder: str | Path, step: int, sharded: bool = False) -> Path:
    return Path(folder) / (f"step_{step:08d}" if sharded else f"step_{step:08d}.pt")


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint, oldest first (temporary files never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def resume_hint(folder: Path) -> str:
    """Where a stopped run resumes from, in words. From the names alone (a checkpoint gets its name only
    when complete): this runs on every process on an error path, where reading a file costs time."""
    found = list_checkpoints(folder)
    if not found:
        return "no complete checkpoint was written yet"
    step, path = found[-1]
    return (f"the last complete checkpoint is {path} (step {step}); once the cause is fixed, run the "
            "same command with --resume auto")


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write, and put back a sharded checkpoint
    whose re-save was cut between its two renames (`.step_X.old`, the complete old set, becomes `step_X`
    again when no `step_X` is there); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    for old in sorted(folder.glob(".step_*.old")):
        named = folder / old.name[1:-len(".old")]
        if not named.exists():
            old.rename(named)
            log.warning("put back checkpoint %s, whose re-save was cut off", named.name)
    gone = sorted(folder.glob(".step_*.tmp-*")) + sorted(folder.glob(".step_*.old"))
    for p in gone:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        log.warning("removed an incomplete checkpoint left by a crashed writer: %s", p.name)
    return gone


def estimate_bytes(model: torch.nn.Module, world: int = 1) -> int:
    """Bytes of one checkpoint of `model` (any device, `meta` included): model and EMA state, AdamW's
    two fp32 moments per trainable parameter, and the per-tensor and per-process overhead of the
    file formats (RNG states, config; measured on small checkpoints, generous)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    moments = sum(8 * p.numel() for p in trainable)
    tensors = 2 * len(model.state_dict()) + 3 * len(trainable)
    return int(2 * state + moments + 1024 * tensors + 64 * 1024 * world)


def run_bytes(model: torch.nn.Module, world: int, keep: int) -> int:
    """Bytes a run folder holds at most in checkpoints: `keep + 1` checkpoints (the kept ones and the one
    being written) and the EMA export (a quarter of a checkpoint)."""
    ckpt = estimate_bytes(model, world)
    return (keep + 1) * ckpt + ckpt // 4


def preflight(out: Path, model: torch.nn.Module, world: int, keep: int, other_bytes: int, other: str) -> None:
    """Before a run creates anything: its folder must be writable and have room for its checkpoints and
    export (`run_bytes`) and `other_bytes` (`other`, e.g. sample grids), less what a resumed run already
    has there. Raises `storage.WriteError` naming the folder, the space needed and the space free."""
    ckpt = estimate_bytes(model, world)
    have = storage.bytes_in([p for _, p in list_checkpoints(Path(out) / "checkpoints")] + [Path(out) / "ema.safetensors"])
    need = run_bytes(model, world, keep) + other_bytes + 10**6 - have
    storage.preflight(Path(out), need, f"{keep + 1} checkpoints of {ckpt / 1e6:.1f} MB, the EMA export and {other}")
