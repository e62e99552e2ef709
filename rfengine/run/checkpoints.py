"""A run's checkpoints (torchtitan's CheckpointManager is the model): resume, single-file and sharded
saves written in the background, the agreement of every process on a failed write, pruning, and the
EMA export. The loop calls `maybe_save(step)` after each step, `save()` at the end and `close()` on the
way out; the training state it saves and restores is the shared `TrainState`."""
from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rfengine import checkpoint, config as config_lib, faults, parallel, storage
from rfengine.run.build import Built

log = logging.getLogger("rfengine")


def code_version(package: Path = Path(__file__).resolve().parents[1]) -> str:
    """The git commit of the checkout whose `rfengine/` is `package` (this package, by default), or
    'unknown' when it is not one (an installed copy, perhaps inside someone else's repository, whose HEAD
    says nothing about this code)."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=5,
                                  check=True).stdout.strip()
        if Path(git("rev-parse", "--show-toplevel")).resolve() / "rfengine" != package:
            return "unknown"
        return git("rev-parse", "HEAD")
    except Exception:
        return "unknown"


@dataclass
class TrainState:
    """Where the run is: optimizer steps taken, batches drawn (skipped non-finite steps included: the
    data position), the last finite loss, and the schedule pinned at the run's first start."""
    step: int = 0
    data_position: int = 0
    last_finite_loss: float = float("nan")
    schedule: dict = field(default_factory=dict)


def find(resume: str | None, folder: Path, is_main: bool) -> tuple[Path, dict] | None:
    """The checkpoint a run starts from, read: `resume` 'auto' (the newest checkpoint in `folder` that
    loads; None when there is none, so that one command serves the first start and every restart), a
    path, or None (a fresh run). Collective: rank 0 clears the leftovers of a crashed writer and chooses,
    and every process reads the checkpoint rank 0 chose (each listing the folder on its own could pick
    another step while rank 0 is still renaming, and the group would split). Checkpoints that exist but
    none of which loads stop the run rather than start it over."""
    if not resume:
        return None
    choice, found = None, None
    if is_main:
        try:
            checkpoint.remove_temporaries(folder)
            if resume != "auto":
                choice = ("path", str(resume))
            else:
                found = checkpoint.latest(folder)
                present = checkpoint.list_checkpoints(folder)
                choice = ("path", str(found[0])) if found else ("none", [p.name for _, p in present])
        except ValueError as e:  # said on every process, not only rank 0's (the others would wait for it)
            choice = ("error", str(e))
    kind, value = parallel.broadcast_object(choice)
    if kind == "error":
        raise ValueError(value)
    if kind == "none":
        if value:  # never start over silently on top of a run whose checkpoints cannot be read
            raise ValueError(
                f"--resume auto: none of the {len(value)} checkpoint(s) in {folder} loads "
                f"({', '.join(value[-3:])}; the warnings above say why); to start "
                "fresh, move them away or choose another train.out_dir")
        log.info("--resume auto: no checkpoint in %s, starting fresh", folder)
        return None
    path = Path(value)
    return path, (found[1] if found is not None else checkpoint.load(path))


class CheckpointManager:
    """Every checkpoint of one run, on every process (rank 0 writes single files; under FSDP every
    process writes its shards)."""

    def __init__(self, cfg, dist, out: Path, built: Built, state: TrainState, data_shape):
        self.cfg, self.dist, self.built, self.state, self.data_shape = cfg, dist, built, state, data_shape
        self.folder = out / "checkpoints"
        self.out = out
        self.writer = checkpoint.BackgroundWriter()  # single-file checkpoints (rank 0), sharded ones (every rank)
        self.code_version = code_version()  # once per run, not a subprocess on the training thread at every save
        self.group = parallel.side_group() if built.sharded and cfg.train.async_ckpt else None

    # ------------------------------------------------------------------------------------------
    # Reading
    # ------------------------------------------------------------------------------------------

    def load(self, found: tuple[Path, dict] | None) -> dict | None:
        """Resume from `found` (what `find` returned; None: start fresh) into the built model, EMA,
        optimizer, schedule and `state`; returns the schedule the run was started with (None for a fresh
        run or an older checkpoint)."""
        if found is None:
            return None
        path, ckpt = found
        b = self.built
        if "sharded" in ckpt:
            self._load_sharded(ckpt["sharded"])
        elif b.sharded and self.dist.world > 1:
            raise ValueError(f"checkpoint {path} is a single-file (parallel.mode=ddp) checkpoint; parallel.mode=fsdp "
                             f"with {self.dist.world} processes resumes from sharded checkpoints only. Resume it "
                             "with parallel.mode=ddp (or on one process), then switch at the next checkpoint.")
        else:
            checkpoint.load_model_state(b.model, ckpt["model"], f"checkpoint {path}")
            checkpoint.load_model_state(b.ema, ckpt["ema"], f"checkpoint {path} (EMA)")
            b.optimizer.load_state_dict(ckpt["optimizer"])
        b.scheduler.load_state_dict(ckpt["scheduler"])
        s = self.state
        s.step = int(ckpt["step"])
        s.data_position = int(ckpt.get("batches", s.step))
        s.last_finite_loss = ckpt.get("last_finite_loss", float("nan"))
        rng = ckpt.get("rng", [])
        if len(rng) == self.dist.world:
            checkpoint.restore_rng(rng[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d process(es), this run has %d: data order is exact, "
                        "noise streams are re-seeded", len(rng), self.dist.world)
            torch.manual_seed(self.cfg.train.seed * 1000 + self.dist.rank + 1 + 7919 * s.step)
        log.info("resumed from %s at step %d", path, s.step)
        return ckpt.get("schedule")

    def _sharded_state(self) -> dict:
        """Model, EMA and optimizer state keyed by parameter name, as this run lays them out (sharded
        DTensors under FSDP, plain tensors otherwise): what torch.distributed.checkpoint saves and fills."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        b = self.built
        return {"model": get_model_state_dict(b.model), "ema": get_model_state_dict(b.ema),
                "optimizer": get_optimizer_state_dict(b.model, b.optimizer)}

    def _load_sharded(self, path: str) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
        b = self.built
        state = checkpoint.load_sharded(path, self._sharded_state())
        set_model_state_dict(b.model, state["model"])
        set_model_state_dict(b.ema, state["ema"])
        set_optimizer_state_dict(b.model, b.optimizer, state["optimizer"])

    # ------------------------------------------------------------------------------------------
    # Writing
    # ------------------------------------------------------------------------------------------

    def meta(self) -> dict:
        """What rebuilds the model from its weights alone."""
        return {"step": self.state.step, "config": config_lib.to_dict(self.cfg), "code_version": self.code_version,
                "data_shape": list(self.data_shape), "num_classes": self.built.model.num_classes}

    def failure(self) -> Exception | None:
        """A background write of this process that failed (without waiting for one in flight)."""
        return self.writer.failure()

    def stop_on_write_error(self, error: Exception | None) -> None:
        """Collective: when a write failed on any process, every process stops with one error that names
        the file, the cause and the checkpoint to resume from."""
        errors = [e for e in parallel.all_gather_object(None if error is None else str(error)) if e]
        if errors:
            raise storage.WriteError(f"{errors[0]}; {checkpoint.resume_hint(self.folder)}")

    def _wait(self) -> None:
        """Collective: the write in flight completes; its failure on any process stops every process."""
        error = None
        try:
            self.writer.wait()
        except storage.WriteError as e:
            error = e
        self.stop_on_write_error(error)

    def maybe_save(self, step: int) -> bool:
        """Collective: at every `train.ckpt_every` step before the last, a checkpoint in the background;
        returns whether this step saved one."""
        due = step % self.cfg.train.ckpt_every == 0 and step < self.cfg.train.steps
        if due:
            self.save(wait=False)
        return due

    def save(self, wait: bool = True) -> Path | None:
        """Collective. With `wait=False` and `train.async_ckpt`, the checkpoint is written in the
        background (its failure stops the run at the next step); the run's last one waits."""
        self._wait()
        rng = parallel.all_gather_object(checkpoint.capture_rng())
        s, b, step = self.state, self.built, self.state.step
        state = {**self.meta(), "batches": s.data_position, "scheduler": b.scheduler.state_dict(), "rng": rng,
                 "schedule": s.schedule, "world_size": self.dist.world, "last_finite_loss": s.last_finite_loss}
        out = self.out

        def crash_or_hold(tmp):  # the fault points of the crash and slow-storage tests (faults.before_rename)
            faults.before_rename(step, tmp, out)

        def prune():
            checkpoint.prune(self.folder, self.cfg.train.keep_ckpts)

        background = self.cfg.train.async_ckpt and not wait
        path = error = None
        try:
            if b.sharded:  # every process writes its shards; a failure raises on every process
                path = checkpoint.save_sharded(self._sharded_state(), {**state, "format": "dcp"},
                                               checkpoint.checkpoint_path(self.folder, step, sharded=True),
                                               self.dist.is_main, before_rename=crash_or_hold, after=prune,
                                               writer=self.writer if background else None, group=self.group)
            elif self.dist.is_main:
                state.update(model=b.model.state_dict(), ema=b.ema.state_dict(), optimizer=b.optimizer.state_dict())
                path = checkpoint.checkpoint_path(self.folder, step)
                self.writer.submit(state, path, before_rename=crash_or_hold, after=prune)
                if not background:
                    self.writer.wait()
        except storage.WriteError as e:
            error = e
        self.stop_on_write_error(error)
        parallel.barrier()
        return path

    def finish_save(self) -> Path:
        """Collective: complete the checkpoint of this step already in flight (a stop requested on a
        checkpoint step), instead of writing the same step a second time; returns its path."""
        self._wait()
        parallel.barrier()
        return checkpoint.checkpoint_path(self.folder, self.state.step, sharded=self.built.sharded)

    def close(self) -> None:
        """On the way out (an error included), the checkpoint in flight is completed before the process
        group goes: a newer resume point, and no DCP collective cut off mid-write. Its own failure was, or
        will be, reported by the step that saw it."""
        try:
            self.writer.wait()
        except storage.WriteError:
            pass

    def export_ema(self) -> Path | None:
        """Collective: the full EMA weights as one safetensors file (`<out>/ema.safetensors`) that loads
        into a single-process model (`rfengine.weights.load_model`); gathered from the shards under FSDP."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(self.built.ema, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        path = error = None
        if self.dist.is_main:
            try:
                with faults.full_disk("fill_disk_export", self.state.step, self.out):
                    path = checkpoint.export_safetensors(state, self.out / "ema.safetensors",
                                                         {**self.meta(), "weights": "ema"})
            except storage.WriteError as e:
                error = e
        self.stop_on_write_error(error)
        return path
