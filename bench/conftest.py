"""Benchmark setup: compile workers off (they inflate eager timings taken next to them), a local
inductor cache, and the device, versions and commit recorded in every `--benchmark-json`."""
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).parent / ".inductor-cache"))

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def device_info() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu",
            "cpu_threads": torch.get_num_threads()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, device_memory_gib=round(p.total_memory / 2**30, 1),
                    sm_count=p.multi_processor_count)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                        check=True).stdout.strip()
    except Exception:
        info["commit"] = "unknown"
    return info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["rfengine"] = device_info()


def pytest_report_header(config):
    return f"rfengine bench: {device_info()}"
