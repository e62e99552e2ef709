"""Run telemetry: metrics.jsonl, the progress bar, throughput and device memory/NVML readings."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger("rfengine")


def _step_of(line: str, torn: int) -> int:
    """The row's step; `torn` for a blank line or one cut short by a crash mid-write."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return torn


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
        self._f.close()


class Throughput:
    """Images per second over the steps since the last reading."""

    def __init__(self):
        self._t = time.perf_counter()
        self._n = 0

    def add(self, images: int) -> None:
        self._n += images

    def read(self, device: torch.device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        rate = self._n / max(now - self._t, 1e-9)
        self._t, self._n = now, 0
        return rate


class DeviceStats:
    """Peak memory and, through NVML, utilisation and power; reported as unavailable without a driver."""

    def __init__(self, device: torch.device):
        self.device = device
        self.handle = None
        if device.type != "cuda":
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
            return {}
        out = {"peak_mem_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}
        if self.handle is not None:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self.handle)
            out.update(gpu_util=util.gpu, power_w=self._nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0)
        return out


def progress_bar(total: int, initial: int, enabled: bool):
    """tqdm on rank 0; None elsewhere."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, smoothing=0.1)


def setup_logging(is_main: bool, out_dir: Path | None = None) -> None:
    """INFO to stderr (and log.txt) on rank 0, warnings only elsewhere."""
    handlers = [logging.StreamHandler()]
    if is_main and out_dir is not None:
        handlers.append(logging.FileHandler(out_dir / "log.txt"))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers,
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S", force=True)
