"""The training loop, composed from the run's pieces (`rfengine.run`): the folder and its lifetime, what is
trained (`build`), the checkpoints, the metrics and the sample grids.

One step: next batch -> label dropout -> objective loss under autocast -> backward -> clip -> one flag
tensor agreed over every process (non-finite, stop, write failure; the step's only host read) -> skip or
optimizer step -> LR schedule -> EMA. Then: metrics -> checkpoint -> grid -> stop, on the agreed stop flag
only (a signal that lands during or after a step's flag read is agreed at the next step, on every process).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch

from rfengine import config as config_lib, faults, parallel, storage
from rfengine.data import batches, build_dataset
from rfengine.models import drop_labels
from rfengine.objectives import pin_schedule
from rfengine.optim import ema_update
from rfengine.run import build as build_lib, lifecycle
from rfengine.run.checkpoints import CheckpointManager, TrainState, find as find_checkpoint
from rfengine.run.grids import latent_decoder, save_samples
from rfengine.run.metrics import RunMetrics

log = logging.getLogger("rfengine")


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


class Trainer:
    """Builds everything from a validated `Config`; `run()` trains to `train.steps`."""

    def __init__(self, cfg: config_lib.Config, resume: str | None = None):
        self.cfg = cfg
        self.dist = parallel.init_distributed(cfg.parallel.backend)
        self.out = Path(cfg.train.out_dir)
        self.dataset = build_dataset(cfg.data)
        shape, classes = self.dataset.shape, self.dataset.num_classes
        # a run that cannot write, or that would mix with another run in its folder, never starts
        lifecycle.prepare(cfg, self.dist, self.out, shape, classes, fresh=not resume)
        start = find_checkpoint(resume, self.out / "checkpoints", self.dist.is_main)
        self.built = build_lib.build(cfg, self.dist, shape, classes, init=start is None)  # resume: no init_from
        b = self.built
        self.model, self.wrapped, self.ema, self.optimizer, self.scheduler = (b.model, b.wrapped, b.ema, b.optimizer,
                                                                              b.scheduler)
        self.state = TrainState()
        self.checkpoints = CheckpointManager(cfg, self.dist, self.out, b, self.state, shape)
        self.metrics = RunMetrics(cfg, self.dist, self.out, self.model)
        self.stop = None  # run() installs the SIGTERM/SIGINT handlers
        self.stop_agreed = False  # the last step's stop flag, agreed over every process: what the loop acts on
        self.decoder = latent_decoder(self.dataset)  # a latent run's grids: through its VAE, if it loads
        recorded = self.checkpoints.load(start)
        self.objective, self.state.schedule = pin_schedule(b.objective, cfg.objective, cfg.train.steps, recorded)
        if self.dist.is_main:
            lifecycle.save_config(cfg, self.state.schedule, self.out)
        if self.state.step == 0:  # every rank draws different noise, reproducibly per rank
            torch.manual_seed(cfg.train.seed * 1000 + self.dist.rank + 1)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def data_position(self) -> int:
        """Batches drawn so far, skipped (non-finite) steps included."""
        return self.state.data_position

    def _autocast(self):
        if self.cfg.train.precision != "bf16":  # (no autocast object at all: some devices have none)
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)

    def _failed_write(self) -> Exception | None:
        """An essential write of this process that failed: metrics.jsonl, or a background checkpoint."""
        return self.metrics.write_error or self.checkpoints.failure()

    def train_step(self, x1: torch.Tensor, y: torch.Tensor) -> tuple[bool, dict]:
        """One optimisation step; returns (applied, metrics). A non-finite loss or gradient on any
        rank skips the update on every rank. Records in `stop_agreed` whether any rank had a stop
        signal pending when it read its flags."""
        cfg, phases = self.cfg, self.metrics.phases
        y = drop_labels(y, cfg.model.class_dropout, self.model.null_class) if self.model.num_classes > 0 else None
        self.optimizer.zero_grad(set_to_none=True)
        with phases.phase("fwd_bwd"):
            with self._autocast():
                loss, metrics = self.objective.loss(self.wrapped, x1, y, self.state.step)
            loss.backward()
        with phases.phase("optimizer"):
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = parallel.full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
            # Every flag every process needs to agree on, in one tensor, reduced once and read to the
            # host once: the only device sync of a step that is not logged.
            stop = float(self.stop is not None and self.stop.requested)
            failed = float(self._failed_write() is not None)
            dev = self.dist.device  # host values enter as fills (kernel arguments), not as copies that sync
            bad = (~torch.isfinite(loss.detach())).float() + (~torch.isfinite(grad_norm)).float()
            flags = torch.stack([bad.to(dev), torch.full((), stop, device=dev), torch.full((), failed, device=dev)])
            nonfinite, stop, failed = parallel.all_reduce(flags, op=torch.distributed.ReduceOp.MAX).tolist()
            self.stop_agreed = stop > 0
            if failed > 0:  # a process could not write a checkpoint or metrics.jsonl: every process stops
                self.checkpoints.stop_on_write_error(self._failed_write())
            if nonfinite == 0:
                self.optimizer.step()
                self.scheduler.step()
                ema_update(self.ema, self.model, cfg.optim.ema_decay)
            else:
                self.optimizer.zero_grad(set_to_none=True)
        metrics["grad_norm"] = grad_norm.detach()
        return nonfinite == 0, metrics

    def _grid(self) -> Path | None:
        return save_samples(self.cfg, self.dist, self.ema, self.dataset.shape, self.built.sharded, self.state.step,
                            self.out, self.decoder)

    def run(self) -> dict:
        """Train from the current step to `train.steps`; returns a summary. The SIGTERM/SIGINT handlers
        and the reporting live exactly as long as this call, whatever it raises."""
        cfg, s = self.cfg, self.state
        data = batches(self.dataset, cfg.train.batch_size, rank=self.dist.rank, world=self.dist.world,
                       seed=cfg.train.seed, flip=cfg.data.flip, start_batch=s.data_position,
                       num_workers=cfg.data.num_workers, device=self.dist.device)
        guard, start, t0 = _NonFiniteGuard(cfg.train.max_bad_steps, s), s.step, time.perf_counter()
        self.wrapped.train()
        with lifecycle.StopSignals() as self.stop, contextlib.closing(self.metrics), \
                contextlib.closing(self.checkpoints):
            self.metrics.open(s.step)
            while s.step < cfg.train.steps:
                self.metrics.phases.start(self.metrics.logs_at(s.step + 1))  # logged steps are timed
                with self.metrics.phases.phase("data"):
                    x1, y = next(data)
                s.data_position += 1
                applied, metrics = self.train_step(x1, y)
                if not guard.check(applied, metrics):
                    if self.stop_agreed:  # a stop agreed on a skipped step is not held back by the next ones
                        return self._stopped(guard, saved=False)
                    continue
                s.step += 1
                faults.maybe_crash("after_step", s.step)
                faults.disturb(s.step, self.out, self.dist.is_main)
                self.metrics.step_done(s.step, metrics, self.optimizer.param_groups[0]["lr"], guard.total)
                saved = self.checkpoints.maybe_save(s.step)
                if s.step % cfg.train.sample_every == 0 and s.step < cfg.train.steps:
                    self._grid()
                if self.stop_agreed:
                    return self._stopped(guard, saved)
            guard.keep_last()
            self.checkpoints.save()
            self.checkpoints.export_ema()
            grid = self._grid()
            return self._finish(start, time.perf_counter() - t0, grid)

    def _stopped(self, guard: "_NonFiniteGuard", saved: bool) -> dict:
        """Checkpoint the step reached and end the run on an agreed stop (a checkpoint step's own save is
        completed, not written twice)."""
        guard.keep_last()
        path = self.checkpoints.finish_save() if saved else self.checkpoints.save()
        where = f"; checkpoint {path}" if path is not None else ""  # (rank 0 names a single-file checkpoint)
        log.warning("stopped at step %d%s. Resume by running the same command with --resume auto",
                    self.state.step, where)
        return {"step": self.state.step, "stopped": True}

    def _finish(self, start: int, elapsed: float, grid) -> dict:
        """The run's summary, logged and written (`summary.json`, rank 0)."""
        steps = self.state.step - start
        log.info("done: %d steps in %.1f s (%.3f s/step); samples %s", steps, elapsed, elapsed / max(steps, 1), grid)
        summary = {"step": self.state.step, "stopped": False, "seconds": elapsed,
                   "init_from": self.built.init_source, "throughput": self.metrics.summary()}
        if self.dist.is_main:  # the run's rates in one small file (bench/train_check.py reads it)
            try:
                storage.write_json(self.out / "summary.json", summary)
            except storage.WriteError as e:  # the run is complete; metrics.jsonl has the same numbers
                log.warning("run summary not written: %s", e)
        return summary


class _NonFiniteGuard:
    """Counts skipped (non-finite) steps; too many in a row stop the run with the last finite loss."""

    def __init__(self, limit: int, state: TrainState):
        self.limit, self.state = limit, state
        self.in_row = self.total = 0
        self.last_loss = None

    def check(self, applied: bool, metrics: dict) -> bool:
        """Whether the step was applied; a skipped one is counted, logged, and may end the run."""
        if applied:
            self.in_row, self.last_loss = 0, metrics["loss"]
            return True
        self.in_row, self.total = self.in_row + 1, self.total + 1
        log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", self.state.step, self.in_row)
        if self.in_row >= self.limit:
            self.keep_last()
            raise NonFiniteError(f"{self.in_row} consecutive non-finite steps at step {self.state.step}; "
                                 f"last finite loss {self.state.last_finite_loss:.6g}. Lower optim.lr or check the data.")
        return False

    def keep_last(self) -> None:
        """The last finite loss into the state (one host read, when the run stops or ends)."""
        if self.last_loss is not None:
            self.state.last_finite_loss = float(self.last_loss)
