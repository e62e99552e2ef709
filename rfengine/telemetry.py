"""Run telemetry: metrics.jsonl, TensorBoard, the progress bar, throughput (images/s, tokens/s),
model FLOPs and MFU, per-phase times, peak memory and NVML readings."""
from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from pathlib import Path

import torch

from rfengine import parallel

log = logging.getLogger("rfengine")


def _step_of(line: str, torn: int) -> int:
    """The row's step; `torn` for a blank line or one cut short by a crash mid-write."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return torn


def logs_at(step: int, every: int, last: int) -> bool:
    """Whether completed step `step` (counted from 1) writes a metrics row: every `every`-th step and the
    run's `last` one."""
    return step % every == 0 or step == last


def reduce_metrics(metrics: dict, device: torch.device) -> dict[str, float]:
    """The objective's metrics (detached 0-dim tensors on the training device) as plain floats, agreed
    over every process: maxima (`*_max`) by max, everything else by the mean. One stacked tensor per
    reduction and one read to the host: the metrics never wait on the device before this."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    keys = sorted(metrics)
    out = {}
    for names, op in (([k for k in keys if not k.endswith("_max")], "mean"),
                      ([k for k in keys if k.endswith("_max")], "max")):
        if not names:
            continue
        vals = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).to(device)
        if op == "max":
            vals = parallel.all_reduce(vals, op=torch.distributed.ReduceOp.MAX)
        else:
            vals = parallel.all_reduce(vals) / world
        out.update(zip(names, vals.tolist()))
    return {k: out[k] for k in keys}


class MetricsFile:
    """Append-only `metrics.jsonl`, one JSON object per logged step. On resume, rows after the
    resumed step (logged by the crashed run before its last checkpoint was lost) are dropped so the
    file reads as one uninterrupted run."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line, resume_step + 1) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._f = open(self.path, "a", buffering=1)

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the failed write that got here is already reported (storage.WriteError)
            pass


class Throughput:
    """Images per second over the steps since the last reading, and the run's steady rate: every
    interval after the first `warmup` steps of this process (compilation, allocator and cuDNN
    warm-up land in those)."""

    def __init__(self, warmup: int = 0):
        self._t = time.perf_counter()
        self._n = 0
        self._steps = 0
        self.warmup = warmup
        self.steady_images = 0
        self.steady_seconds = 0.0

    def add(self, images: int) -> None:
        self._n += images
        self._steps += 1

    def read(self, device: torch.device) -> tuple[float, float, bool]:
        """(images/s since the last reading, seconds elapsed, whether the interval counts as steady)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        elapsed = max(now - self._t, 1e-9)
        rate = self._n / elapsed
        steady = self.warmup <= 0
        if steady:
            self.steady_images += self._n
            self.steady_seconds += elapsed
        else:  # an interval holding any of the first `warmup` steps is not steady
            self.warmup -= self._steps
        self._t, self._n, self._steps = now, 0, 0
        return rate, elapsed, steady

    @property
    def steady_rate(self) -> float | None:
        return self.steady_images / self.steady_seconds if self.steady_seconds > 0 else None


class ModelRows:
    """Counts the images that pass through the model, split into calls with a graph (they also run a
    backward: 3x the forward FLOPs) and calls without (the rollout, FC's drifted forward, inference: 1x). Counting the calls the
    objective really makes keeps MFU honest for every objective and `adr.prob`."""

    def __init__(self, model: torch.nn.Module):
        self.grad = 0
        self.nograd = 0
        self._hook = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        rows = args[0].shape[0]
        if torch.is_grad_enabled():
            self.grad += rows
        else:
            self.nograd += rows

    def forward_units(self) -> int:
        """Forward-pass equivalents since the last call (a backward counts as two forwards)."""
        units = 3 * self.grad + self.nograd
        self.grad = self.nograd = 0
        return units

    def remove(self) -> None:
        self._hook.remove()


# Dense peak rates per device in TFLOP/s, from the vendors' datasheets (no sparsity). `fp32` is the
# CUDA-core rate; `tf32` applies when fp32 matmuls may use TF32 tensor cores.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM (H100 80GB HBM3)
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
}


def peak_tflops(device: torch.device, precision: str, override: float = 0.0) -> float | None:
    """The device's dense peak for the training precision; `override` (> 0) wins; None when unknown
    (CPUs, unlisted cards): MFU is then reported as unavailable."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    kind = "bf16" if precision == "bf16" else ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
    for key, rates in PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return rates[kind]
    return None


class PhaseTimer:
    """Wall time per phase of a step (data, no-grad model calls, forward+backward, optimizer), measured on the
    steps that are logged: there the device is synchronised at each phase boundary so the times are
    real; other steps run unsynchronised and are not timed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.active = False
        self.times: dict[str, float] = {}
        self._nograd_t0 = None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, active: bool) -> None:
        self.active = active
        self.times = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.active:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def watch_nograd(self, model: torch.nn.Module) -> None:
        """Time the model calls made without a graph (the ADR rollout, and FC's drifted forward on the
        velocity bias) as their own phase `nograd`; they are subtracted from the enclosing
        forward+backward phase in `read`."""
        def pre(module, args):
            if self.active and not torch.is_grad_enabled():
                self._sync()
                self._nograd_t0 = time.perf_counter()

        def post(module, args, out):
            if self.active and self._nograd_t0 is not None:
                self._sync()
                self.times["nograd"] = self.times.get("nograd", 0.0) + time.perf_counter() - self._nograd_t0
                self._nograd_t0 = None
        model.register_forward_pre_hook(pre)
        model.register_forward_hook(post)

    def read(self) -> dict:
        """{'time_<phase>_ms': ...} for the last timed step."""
        t = dict(self.times)
        if "nograd" in t and "fwd_bwd" in t:
            t["fwd_bwd"] -= t["nograd"]
        return {f"time_{k}_ms": 1000.0 * v for k, v in t.items()}


class TensorBoard:
    """Scalars to `<out>/tensorboard` when the `tensorboard` package is importable; otherwise a note
    in the log once (metrics.jsonl holds the same numbers)."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            log.info("TensorBoard not available (%s); metrics.jsonl has every number", e)
            return
        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def write(self, row: dict) -> None:
        if self.writer is None:
            return
        step = row["step"]
        try:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        except Exception as e:  # not essential: metrics.jsonl holds the same numbers
            self._give_up(e)

    def _give_up(self, e: Exception) -> None:
        log.warning("TensorBoard events not written (%s: %s); metrics.jsonl has every number, training goes on",
                    type(e).__name__, e)
        self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as e:
                self._give_up(e)


class DeviceStats:
    """Peak memory (CUDA allocator, or the process's peak resident set on CPU) and, through NVML,
    GPU utilisation, power and memory in use; NVML readings are simply absent without a driver."""

    def __init__(self, device: torch.device):
        self.device = device
        self.handle = None
        if device.type != "cuda":
            log.info("GPU telemetry (utilisation, power): unavailable on %s", device)
            return
        try:
            import pynvml
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self._nvml = pynvml
        except Exception as e:  # NVMLError_LibraryNotFound and friends: telemetry only
            log.info("NVML not available (%s); GPU utilisation and power will not be logged", e)

    def read(self) -> dict:
        if self.device.type != "cuda":
            return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        out = {"peak_mem_gb": torch.cuda.max_memory_allocated(self.device) / 2**30,
               "peak_reserved_gb": torch.cuda.max_memory_reserved(self.device) / 2**30}
        if self.handle is not None:
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self.handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(self.handle)
                out.update(gpu_util=util.gpu, power_w=self._nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0,
                           nvml_mem_used_gb=mem.used / 2**30)
            except Exception as e:  # a reading that fails once is dropped, not fatal
                log.warning("NVML reading failed (%s); GPU telemetry stops", e)
                self.handle = None
        return out


def progress_bar(total: int, initial: int, enabled: bool):
    """tqdm on rank 0; None elsewhere."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, smoothing=0.1)


class _LogFile(logging.FileHandler):
    """log.txt that goes quiet when it cannot be written (a full disk): stderr still has every line,
    and logging's own error report would bury the run's one-line error."""

    def handleError(self, record):
        self.setLevel(logging.CRITICAL + 1)


def setup_logging(is_main: bool, out_dir: Path | None = None) -> None:
    """INFO to stderr (and log.txt) on rank 0, warnings only elsewhere."""
    handlers = [logging.StreamHandler()]
    if is_main and out_dir is not None:
        handlers.append(_LogFile(out_dir / "log.txt"))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S", force=True)
