"""The training loop: composes config, data, model, objective, optimizer, checkpoints and telemetry.

One step: next batch -> label dropout -> objective loss under autocast -> backward -> clip ->
(skip if non-finite) optimizer step -> LR schedule -> EMA. Rank 0 logs, checkpoints and samples.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import signal
import subprocess
import time
from pathlib import Path

import torch

from rfengine import checkpoint, config as config_lib, faults, parallel, storage, weights
from rfengine.data import batches, build_dataset
from rfengine.models import build_model, drop_labels
from rfengine.models.attention import check_backend as check_attention
from rfengine.objectives import build_objective, pin_schedule
from rfengine.optim import build_optimizer, ema_update, warmup_schedule
from rfengine.sample import generate, save_grid
from rfengine.telemetry import (DeviceStats, MetricsFile, ModelRows, PhaseTimer, TensorBoard, Throughput, peak_tflops,
                                progress_bar, reduce_metrics, setup_logging)

log = logging.getLogger("rfengine")


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a NaN/Inf loss or gradient."""


def code_version() -> str:
    """The git commit of the source tree, or 'unknown' outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except Exception:
        return "unknown"


class _StopFlag:
    """SIGTERM / SIGINT ask the loop to finish the step, checkpoint and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        log.warning("received %s: finishing this step, then checkpointing", signal.Signals(signum).name)

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Trainer:
    """Builds everything from a validated `Config`; `run()` trains to `train.steps`."""

    def __init__(self, cfg: config_lib.Config, resume: str | None = None):
        self.cfg = cfg
        self.dist = parallel.init_distributed(cfg.parallel.backend)
        self.out = Path(cfg.train.out_dir)
        self.dataset = build_dataset(cfg.data)
        self._preflight()  # before anything is created: a run that cannot write its checkpoints never starts
        if self.dist.is_main:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.out / "samples").mkdir(exist_ok=True)
        parallel.barrier()
        setup_logging(self.dist.is_main, self.out)
        log.info("rfengine: %d process(es), device %s", self.dist.world, self.dist.device)

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = self._build_model(self.dist.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.init_source = None  # weights this run started from (train.init_from); a resume overrides them
        if cfg.train.init_from:
            self.init_source = weights.init_weights(self.model, self.ema, cfg.train.init_from,
                                                    cfg.train.init_weights)
            log.info("initial weights from %s", self.init_source)
        check_attention(cfg.model.attention, self.dist.device, self.model.blocks[0].attn.head_dim)
        self.sharded = cfg.parallel.mode == "fsdp"
        self.objective = build_objective(cfg.objective, metrics_every=cfg.train.log_every,
                                         total_steps=cfg.train.steps)
        # Fixed order: activation checkpointing, then per-block compile, then the data-parallel wrapper
        # (DDP around the model, or FSDP2 per block and then the root; the EMA is sharded the same way).
        parallel.apply_ac(self.model, cfg.train.activation_checkpointing)
        parallel.apply_compile(self.model, cfg.train.compile, dynamic_batch=self.objective.varies_batch)
        self.ddp_model = parallel.wrap(self.model, self.dist, cfg.parallel.mode, cfg.train.precision)
        if self.sharded:
            parallel.apply_fsdp(self.ema, self.dist, "fp32")
        # The optimizer comes after sharding: FSDP2 replaces the parameters with sharded ones.
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optim, self.dist.device)
        self.scheduler = warmup_schedule(self.optimizer, cfg.optim.warmup_steps)
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("model %s: %.2fM parameters, input %s, %d classes; objective %s",
                 cfg.model.arch, n_params / 1e6, self.dataset.shape, self.model.num_classes, cfg.objective.name)
        log.info("parallel %s, attention %s, activation checkpointing %s, compile %s", cfg.parallel.mode,
                 cfg.model.attention, cfg.train.activation_checkpointing, "per block" if cfg.train.compile else "off")
        if self.sharded:
            held = sum(parallel.local(p).numel() for p in self.model.parameters() if p.requires_grad)
            log.info("FSDP: this process holds %.2fM of the %.2fM parameters (and their gradients, optimizer "
                     "state and EMA)", held / 1e6, n_params / 1e6)

        self._stop = None  # run() installs the SIGTERM/SIGINT handler
        self._write_error = None  # an essential write (metrics.jsonl) that failed on this process
        self.writer = checkpoint.BackgroundWriter()  # single-file checkpoints (rank 0), sharded ones (every rank)
        self.ckpt_group = parallel.side_group() if self.sharded and cfg.train.async_ckpt else None
        self.phases = PhaseTimer(self.dist.device)  # idle until run() times a logged step
        self.phases.watch_rollout(self.model)
        self.step = 0
        self.batches = 0  # batches drawn so far, skipped (non-finite) steps included: the data position
        self.last_finite_loss = float("nan")
        self._recorded_schedule = None  # the switch step a resumed run was started with (its checkpoint's)
        self._resume(resume)
        self.objective, self.schedule = pin_schedule(self.objective, cfg.objective, cfg.train.steps,
                                                     self._recorded_schedule)
        if self.dist.is_main:  # the resolved config: every default filled in, the switch as a step
            pinned = dataclasses.replace(cfg.objective, start=float(self.schedule["start"]),
                                         ramp=float(self.schedule["ramp"]))
            config_lib.save(dataclasses.replace(cfg, objective=pinned), self.out / "config.yaml")
        # Every rank draws different noise; the seed offset makes the streams reproducible per rank.
        if self.step == 0:
            torch.manual_seed(cfg.train.seed * 1000 + self.dist.rank + 1)

    # -------------------------------------------------------------------------------------------
    # Checkpoints and the run folder
    # -------------------------------------------------------------------------------------------

    def _build_model(self, device):
        cfg, (c, h, w) = self.cfg, self.dataset.shape
        num_classes = self.dataset.num_classes if cfg.model.class_conditional else 0
        return build_model(cfg.model.arch, in_channels=c, input_size=(h, w), num_classes=num_classes,
                           learn_sigma=cfg.model.learn_sigma, class_dropout=cfg.model.class_dropout,
                           attention=cfg.model.attention).to(device)

    def _preflight(self) -> None:
        """Refuse to start when the run folder cannot hold what the run writes (checkpoint.preflight)."""
        cfg, (c, h, w) = self.cfg, self.dataset.shape
        with torch.device("meta"):
            model = self._build_model("meta")
        side = max(h, w, 64)  # grids are upscaled to at least 64 pixels; PNG is at most the raw bytes
        grids = cfg.train.steps // cfg.train.sample_every + 1
        grid_bytes = grids * cfg.sample.num_images * (3 if c >= 3 else 1) * side * side
        checkpoint.preflight(self.out, model, self.dist.world, cfg.train.keep_ckpts, grid_bytes, f"{grids} sample grids")

    def _failed_write(self) -> Exception | None:
        """An essential write of this process that failed: metrics.jsonl, or a background checkpoint."""
        return self._write_error or self.writer.failure()

    def _stop_on_write_error(self, error: Exception | None) -> None:
        """Collective: when a write failed on any process, every process stops with one error that
        names the file, the cause and the checkpoint to resume from."""
        errors = [e for e in parallel.all_gather_object(None if error is None else str(error)) if e]
        if errors:
            raise storage.WriteError(f"{errors[0]}; {checkpoint.resume_hint(self.out / 'checkpoints')}")

    def _resume(self, resume: str | None) -> None:
        if self.dist.is_main:
            checkpoint.remove_temporaries(self.out / "checkpoints")
        if not resume:
            return
        if resume == "auto":
            found = checkpoint.latest(self.out / "checkpoints")
            if found is None:
                present = checkpoint.list_checkpoints(self.out / "checkpoints")
                if present:  # never start over silently on top of a run whose checkpoints cannot be read
                    raise ValueError(
                        f"--resume auto: none of the {len(present)} checkpoint(s) in {self.out / 'checkpoints'} loads "
                        f"({', '.join(p.name for _, p in present[-3:])}; the warnings above say why); to start "
                        "fresh, move them away or choose another train.out_dir")
                log.info("--resume auto: no checkpoint in %s, starting fresh", self.out / "checkpoints")
                return
            path, ckpt = found
        else:
            path = Path(resume)
            ckpt = checkpoint.load(path)
        if "sharded" in ckpt:
            self._load_sharded(ckpt["sharded"])
        elif self.sharded and self.dist.world > 1:
            raise ValueError(f"checkpoint {path} is a single-file (parallel.mode=ddp) checkpoint; parallel.mode=fsdp "
                             f"with {self.dist.world} processes resumes from sharded checkpoints only. Resume it "
                             "with parallel.mode=ddp (or on one process), then switch at the next checkpoint.")
        else:
            checkpoint.load_model_state(self.model, ckpt["model"], f"checkpoint {path}")
            checkpoint.load_model_state(self.ema, ckpt["ema"], f"checkpoint {path} (EMA)")
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.batches = int(ckpt.get("batches", self.step))
        self.last_finite_loss = ckpt.get("last_finite_loss", float("nan"))
        self._recorded_schedule = ckpt.get("schedule")
        rng = ckpt.get("rng", [])
        if len(rng) == self.dist.world:
            checkpoint.restore_rng(rng[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d process(es), this run has %d: data order is exact, "
                        "noise streams are re-seeded", len(rng), self.dist.world)
            torch.manual_seed(self.cfg.train.seed * 1000 + self.dist.rank + 1 + 7919 * self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def _sharded_state(self) -> dict:
        """Model, EMA and optimizer state keyed by parameter name, as this run lays them out (sharded
        DTensors under FSDP, plain tensors otherwise): what torch.distributed.checkpoint saves and fills."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        return {"model": get_model_state_dict(self.model), "ema": get_model_state_dict(self.ema),
                "optimizer": get_optimizer_state_dict(self.model, self.optimizer)}

    def _load_sharded(self, path: str) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
        state = checkpoint.load_sharded(path, self._sharded_state())
        set_model_state_dict(self.model, state["model"])
        set_model_state_dict(self.ema, state["ema"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])

    def _meta(self) -> dict:
        """What rebuilds the model from its weights alone."""
        return {"step": self.step, "config": config_lib.to_dict(self.cfg), "code_version": code_version(),
                "data_shape": list(self.dataset.shape), "num_classes": self.model.num_classes}

    def save_checkpoint(self, wait: bool = True) -> Path | None:
        """Collective. With `wait=False` and `train.async_ckpt`, the checkpoint is written in the
        background (its failure stops the run at the next step); the run's last one waits."""
        error = None
        try:  # the write in flight first: its failure on any process stops every process here
            self.writer.wait()
        except storage.WriteError as e:
            error = e
        self._stop_on_write_error(error)
        rng = parallel.all_gather_object(checkpoint.capture_rng())
        step = self.step
        state = {**self._meta(), "batches": self.batches, "scheduler": self.scheduler.state_dict(), "rng": rng, "schedule": self.schedule,
                 "world_size": self.dist.world, "last_finite_loss": self.last_finite_loss}
        folder = self.out / "checkpoints"
        crash = lambda tmp: faults.before_rename(step, tmp, self.out)  # noqa: E731
        prune = lambda: checkpoint.prune(folder, self.cfg.train.keep_ckpts)  # noqa: E731
        background = self.cfg.train.async_ckpt and not wait
        path = None
        try:
            if self.sharded:  # every process writes its shards; a failure raises on every process
                path = checkpoint.save_sharded(self._sharded_state(), {**state, "format": "dcp"},
                                               checkpoint.checkpoint_path(folder, step, sharded=True),
                                               self.dist.is_main, before_rename=crash, after=prune,
                                               writer=self.writer if background else None, group=self.ckpt_group)
            elif self.dist.is_main:
                state.update(model=self.model.state_dict(), ema=self.ema.state_dict(),
                             optimizer=self.optimizer.state_dict())
                path = checkpoint.checkpoint_path(folder, step)
                self.writer.submit(state, path, before_rename=crash, after=prune)
                if not background:
                    self.writer.wait()
        except storage.WriteError as e:
            error = e
        self._stop_on_write_error(error)
        parallel.barrier()
        return path

    def finish_save(self) -> Path:
        """Collective: complete the checkpoint of this step that is already in flight (a stop requested
        on a checkpoint step), instead of writing the same step a second time; returns its path."""
        error = None
        try:
            self.writer.wait()
        except storage.WriteError as e:
            error = e
        self._stop_on_write_error(error)
        parallel.barrier()
        return checkpoint.checkpoint_path(self.out / "checkpoints", self.step, sharded=self.sharded)

    def _finish_background_write(self) -> None:
        """On the way out (an error included), the checkpoint in flight is completed before the
        process group goes: a newer resume point, and no DCP collective cut off mid-write. Its own
        failure was, or will be, reported by the step that saw it."""
        try:
            self.writer.wait()
        except storage.WriteError:
            pass

    def export_ema(self) -> Path | None:
        """The full EMA weights as one safetensors file (`<out>/ema.safetensors`) that loads into a
        single-process model (`rfengine.weights.load_model`); gathered from the shards under FSDP."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(self.ema, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        path = error = None
        if self.dist.is_main:
            try:
                with faults.full_disk("fill_disk_export", self.step, self.out):
                    path = checkpoint.export_safetensors(state, self.out / "ema.safetensors",
                                                         {**self._meta(), "weights": "ema"})
            except storage.WriteError as e:
                error = e
        self._stop_on_write_error(error)
        return path

    def save_samples(self) -> Path | None:
        if not (self.dist.is_main or self.sharded):  # a sharded EMA needs every process for a forward
            return None
        s = self.cfg.sample
        n = s.num_images
        labels = None
        if self.model.num_classes > 0:
            labels = torch.arange(n, device=self.dist.device) % self.model.num_classes
        x = generate(self.ema, shape=self.dataset.shape, n=n, labels=labels, method=s.method, steps=s.steps,
                     cfg_scale=s.cfg_scale, shift=s.shift, seed=self.cfg.train.seed, device=self.dist.device,
                     null_class=self.model.null_class)
        parallel.reshard(self.ema)  # else the EMA's root stays gathered, and the next EMA update meets full tensors
        if not self.dist.is_main:
            return None
        path = self.out / "samples" / f"step_{self.step:08d}.png"
        try:
            with faults.full_disk("fill_disk_grid", self.step, self.out):
                return save_grid(x, path, nrow=min(n, 10))
        except OSError as e:  # a grid is not essential: say so and go on
            error = e if isinstance(e, storage.WriteError) else storage.write_error(path, e)
            log.warning("sample grid not written: %s; training goes on", error)
            return None

    # -------------------------------------------------------------------------------------------
    # The loop
    # -------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.train.precision != "bf16":  # (no autocast object at all: some devices have none)
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)

    def train_step(self, x1: torch.Tensor, y: torch.Tensor) -> tuple[bool, dict]:
        """One optimisation step; returns (applied, metrics). A non-finite loss or gradient on any
        rank skips the update on every rank."""
        cfg = self.cfg
        if self.model.num_classes > 0:
            y = drop_labels(y, cfg.model.class_dropout, self.model.null_class)
        else:
            y = None
        self.optimizer.zero_grad(set_to_none=True)
        with self.phases.phase("fwd_bwd"):
            with self._autocast():
                loss, metrics = self.objective.loss(self.ddp_model, x1, y, self.step)
            loss.backward()
        with self.phases.phase("optimizer"):
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = parallel.full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
            # Every flag every process needs to agree on, in one tensor, reduced once and read to the
            # host once: the only device sync of a step that is not logged.
            stop = float(self._stop is not None and self._stop.requested)
            failed = float(self._failed_write() is not None)
            dev = self.dist.device  # host values enter as fills (kernel arguments), not as copies that sync
            bad = (~torch.isfinite(loss.detach())).float() + (~torch.isfinite(grad_norm)).float()
            flags = torch.stack([bad.to(dev), torch.full((), stop, device=dev), torch.full((), failed, device=dev)])
            flags = parallel.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            nonfinite, stop, failed = flags.tolist()
            if self._stop is not None:
                self._stop.requested = stop > 0
            if failed > 0:  # a process could not write a checkpoint or metrics.jsonl: every process stops
                self._stop_on_write_error(self._failed_write())
            finite = nonfinite == 0
            if finite:
                self.optimizer.step()
                self.scheduler.step()
                ema_update(self.ema, self.model, cfg.optim.ema_decay)
            else:
                self.optimizer.zero_grad(set_to_none=True)
        metrics["grad_norm"] = grad_norm.detach()
        return finite, metrics

    def _log(self, metrics: dict, reading: tuple[float, float, bool], bad_steps: int, bar) -> None:
        values = reduce_metrics(metrics, self.dist.device)
        images_per_s, seconds, steady = reading
        tflops = self.rows.forward_units() * self.flops_per_image * self.dist.world / seconds / 1e12
        if steady:
            self.steady_tflop += tflops * seconds
        row = {"step": self.step, **values,
               "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": images_per_s,
               "tokens_per_s": images_per_s * self.tokens_per_image, "model_tflops": tflops,
               "bad_steps": bad_steps, **self.phases.read(), **self.device_stats.read()}
        if self.peak is not None:
            row["mfu"] = tflops / (self.peak * self.dist.world)
        if self.dist.is_main:
            try:
                self.metrics_file.write(row)
            except OSError as e:
                self._write_error = storage.write_error(self.metrics_file.path, e)
            self.tensorboard.write(row)
            if bar is not None:
                extra = {"mfu": f"{row['mfu']:.1%}"} if "mfu" in row else {}
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{images_per_s:.0f}", **extra)

    def _logs_at(self, step: int) -> bool:
        """Whether step `step` writes a metrics row (and so has its phases timed)."""
        return step % self.cfg.train.log_every == 0 or step == self.cfg.train.steps

    def _start_telemetry(self) -> None:
        cfg = self.cfg
        self.device_stats = DeviceStats(self.dist.device)
        self.rows = ModelRows(self.model)
        self.flops_per_image = self.model.forward_flops()
        self.tokens_per_image = self.model.grid[0] * self.model.grid[1]
        self.peak = peak_tflops(self.dist.device, cfg.train.precision, cfg.train.peak_tflops)
        self.steady_tflop = 0.0
        log.info("model FLOPs: %.3f GFLOP per image forward, %d tokens; MFU %s", self.flops_per_image / 1e9,
                 self.tokens_per_image, f"against {self.peak:g} TFLOP/s per device" if self.peak else
                 "unavailable (no peak rate known for this device; set train.peak_tflops)")
        self.tensorboard = TensorBoard(self.out, cfg.train.tensorboard and self.dist.is_main)

    def _summary(self, meter: Throughput) -> dict:
        """The run's rates after warm-up, logged once at the end."""
        rate = meter.steady_rate
        if rate is None:
            return {}
        out = {"images_per_s": rate, "tokens_per_s": rate * self.tokens_per_image,
               "model_tflops": self.steady_tflop / meter.steady_seconds, **self.device_stats.read()}
        if self.peak is not None:
            out["mfu"] = out["model_tflops"] / (self.peak * self.dist.world)
        log.info("after warm-up: %.1f images/s, %.0f tokens/s, %.3f model TFLOP/s%s; %s", rate, out["tokens_per_s"],
                 out["model_tflops"], f", MFU {out['mfu']:.1%}" if "mfu" in out else ", MFU unavailable",
                 ", ".join(f"{k} {v:.2f}" for k, v in out.items() if k.startswith("peak")))
        return out

    def run(self) -> dict:
        """Train from the current step to `train.steps`; returns a summary. The SIGTERM/SIGINT handlers
        live exactly as long as this call, whatever it raises."""
        self._stop = _StopFlag()
        try:
            return self._run()
        finally:
            self._stop.restore()

    def _run(self) -> dict:
        cfg = self.cfg
        self._start_telemetry()
        if self.dist.is_main:
            self.metrics_file = MetricsFile(self.out / "metrics.jsonl", resume_step=self.step)
        data = batches(self.dataset, cfg.train.batch_size, rank=self.dist.rank, world=self.dist.world,
                       seed=cfg.train.seed, flip=cfg.data.flip, start_batch=self.batches,
                       num_workers=cfg.data.num_workers, device=self.dist.device)
        bar = progress_bar(cfg.train.steps, self.step, self.dist.is_main and cfg.train.progress)
        meter = Throughput(warmup=5)
        bad_in_row, bad_total, last_loss = 0, 0, None
        start, t0 = self.step, time.perf_counter()
        self.ddp_model.train()
        try:
            while self.step < cfg.train.steps:
                # Phases are timed (with device syncs) only on the steps that will be logged.
                self.phases.start(self._logs_at(self.step + 1))
                with self.phases.phase("data"):
                    x1, y = next(data)
                self.batches += 1
                finite, metrics = self.train_step(x1, y)
                if finite:
                    bad_in_row = 0
                    self.step += 1
                    last_loss = metrics["loss"]
                else:
                    bad_in_row, bad_total = bad_in_row + 1, bad_total + 1
                    log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)",
                                self.step, bad_in_row)
                    if bad_in_row >= cfg.train.max_bad_steps:
                        if last_loss is not None:
                            self.last_finite_loss = float(last_loss)
                        raise NonFiniteError(
                            f"{bad_in_row} consecutive non-finite steps at step {self.step}; "
                            f"last finite loss {self.last_finite_loss:.6g}. Lower optim.lr or check the data.")
                    continue
                faults.maybe_crash("after_step", self.step)
                faults.disturb(self.step, self.out, self.dist.is_main)
                meter.add(cfg.train.batch_size)
                if bar is not None:
                    bar.update(1)
                if self._logs_at(self.step):
                    self._log(metrics, meter.read(self.dist.device), bad_total, bar)
                saved = self.step % cfg.train.ckpt_every == 0 and self.step < cfg.train.steps
                if saved:
                    self.save_checkpoint(wait=False)
                if self.step % cfg.train.sample_every == 0 and self.step < cfg.train.steps:
                    self.save_samples()
                if self._stop.requested:  # (a checkpoint step's own save is completed, not written twice)
                    self.last_finite_loss = float(last_loss)
                    path = self.finish_save() if saved else self.save_checkpoint()
                    log.warning("stopped at step %d; checkpoint %s. Resume by running the same command with "
                                "--resume auto", self.step, path)
                    return {"step": self.step, "stopped": True}
            if last_loss is not None:
                self.last_finite_loss = float(last_loss)
            self.save_checkpoint()
            self.export_ema()
            grid = self.save_samples()
            elapsed = time.perf_counter() - t0
            log.info("done: %d steps in %.1f s (%.3f s/step); samples %s", self.step - start, elapsed,
                     elapsed / max(self.step - start, 1), grid)
            summary = {"step": self.step, "stopped": False, "seconds": elapsed, "init_from": self.init_source,
                       "throughput": self._summary(meter)}
            if self.dist.is_main:  # the run's rates in one small file (bench/train_check.py reads it)
                try:
                    checkpoint.write_json(self.out / "summary.json", summary)
                except storage.WriteError as e:  # the run is complete; metrics.jsonl has the same numbers
                    log.warning("run summary not written: %s", e)
            return summary
        finally:
            if bar is not None:
                bar.close()
            self._finish_background_write()
            if self.dist.is_main:
                self.metrics_file.close()
                self.tensorboard.close()
            self.rows.remove()
