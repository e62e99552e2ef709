"""What a run reports: one metrics.jsonl row (and TensorBoard scalars) per logged step, with the
objective's terms agreed over the processes, the learning rate, throughput, model TFLOP/s and MFU (from
the model rows the objective really ran), the phases' times and device memory; the progress bar; and
the run's rates after warm-up."""
from __future__ import annotations

import logging
from pathlib import Path

from rfengine import storage
from rfengine.telemetry import (DeviceStats, MetricsFile, ModelRows, PhaseTimer, TensorBoard, Throughput, logs_at,
                                peak_tflops, progress_bar, reduce_metrics)

log = logging.getLogger("rfengine")


class RunMetrics:
    """Telemetry of one run. `write_error` holds a failed metrics.jsonl write (essential: the run stops
    on it at the next step, on every process)."""

    def __init__(self, cfg, dist, out: Path, model):
        self.cfg, self.dist, self.out = cfg, dist, out
        self.phases = PhaseTimer(dist.device)  # idle until a logged step is timed
        self.phases.watch_nograd(model)
        self.write_error: Exception | None = None
        self.model = model
        self.model_rows = self.file = self.tensorboard = self.bar = None

    def open(self, step: int) -> None:
        """Start reporting from `step` (a resumed run appends to its metrics.jsonl)."""
        cfg, model = self.cfg, self.model
        self.device_stats = DeviceStats(self.dist.device)
        self.model_rows = ModelRows(model)  # image forwards the objective ran, a backward counted as two
        self.flops_per_image = model.forward_flops()
        self.tokens_per_image = model.grid[0] * model.grid[1]
        self.peak = peak_tflops(self.dist.device, cfg.train.precision, cfg.train.peak_tflops)
        self.steady_tflop = 0.0
        log.info("model FLOPs: %.3f GFLOP per image forward, %d tokens; MFU %s", self.flops_per_image / 1e9,
                 self.tokens_per_image, f"against {self.peak:g} TFLOP/s per device" if self.peak else
                 "unavailable (no peak rate known for this device; set train.peak_tflops)")
        self.tensorboard = TensorBoard(self.out, cfg.train.tensorboard and self.dist.is_main)
        if self.dist.is_main:
            self.file = MetricsFile(self.out / "metrics.jsonl", resume_step=step)
        self.bar = progress_bar(cfg.train.steps, step, self.dist.is_main and cfg.train.progress)
        self.meter = Throughput(warmup=5)

    def logs_at(self, step: int) -> bool:
        """Whether step `step` writes a metrics row (and so has its phases timed)."""
        return logs_at(step, self.cfg.train.log_every, self.cfg.train.steps)

    def step_done(self, step: int, metrics: dict, lr: float, bad_steps: int) -> None:
        """Count the step; at a logged step, write its row (collective: the metrics are reduced)."""
        self.meter.add(self.cfg.train.batch_size)
        if self.bar is not None:
            self.bar.update(1)
        if self.logs_at(step):
            self._log(step, metrics, lr, bad_steps)

    def _log(self, step: int, metrics: dict, lr: float, bad_steps: int) -> None:
        images_per_s, seconds, steady = self.meter.read(self.dist.device)
        values = reduce_metrics(metrics, self.dist.device)
        tflops = self.model_rows.forward_units() * self.flops_per_image * self.dist.world / seconds / 1e12
        if steady:
            self.steady_tflop += tflops * seconds
        row = {"step": step, **values, "lr": lr, "images_per_s": images_per_s,
               "tokens_per_s": images_per_s * self.tokens_per_image, "model_tflops": tflops,
               "bad_steps": bad_steps, **self.phases.read(), **self.device_stats.read()}
        if self.peak is not None:
            row["mfu"] = tflops / (self.peak * self.dist.world)
        if not self.dist.is_main:
            return
        try:
            self.file.write(row)
        except OSError as e:
            self.write_error = storage.write_error(self.file.path, e)
        self.tensorboard.write(row)
        if self.bar is not None:
            extra = {"mfu": f"{row['mfu']:.1%}"} if "mfu" in row else {}
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{images_per_s:.0f}", **extra)

    def summary(self) -> dict:
        """The run's rates after warm-up, logged once at the end."""
        rate = self.meter.steady_rate
        if rate is None:
            return {}
        out = {"images_per_s": rate, "tokens_per_s": rate * self.tokens_per_image,
               "model_tflops": self.steady_tflop / self.meter.steady_seconds, **self.device_stats.read()}
        if self.peak is not None:
            out["mfu"] = out["model_tflops"] / (self.peak * self.dist.world)
        log.info("after warm-up: %.1f images/s, %.0f tokens/s, %.3f model TFLOP/s%s; %s", rate, out["tokens_per_s"],
                 out["model_tflops"], f", MFU {out['mfu']:.1%}" if "mfu" in out else ", MFU unavailable",
                 ", ".join(f"{k} {v:.2f}" for k, v in out.items() if k.startswith("peak")))
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.model_rows is not None:
            self.model_rows.remove()
