"""Fault injection for the crash tests: `RFENGINE_FAULT=<point>@<step>` kills this process with
SIGKILL at a named point of step `<step>`, exactly as a machine loss or an OOM killer would.

Points: `after_step` (after the optimizer step, before logging), `checkpoint_write` (the checkpoint's
temporary file, or every file of a sharded checkpoint's temporary folder, is half written, not yet
renamed). Unset in normal runs; reading it costs nothing.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

POINTS = ("after_step", "checkpoint_write")


def armed(point: str, step: int) -> bool:
    spec = os.environ.get("RFENGINE_FAULT", "")
    if not spec:
        return False
    name, _, at = spec.partition("@")
    if name not in POINTS or not at.isdigit():
        raise ValueError(f"RFENGINE_FAULT={spec!r}: expected <point>@<step> with point in {POINTS}")
    return name == point and int(at) == step


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_crash(point: str, step: int, partial_file: Path | None = None) -> None:
    """SIGKILL this process if the fault `point@step` is armed; a `partial_file` is first cut to
    half its size, as if the write had been interrupted."""
    if not armed(point, step):
        return
    if partial_file is not None and partial_file.exists():
        files = sorted(partial_file.iterdir()) if partial_file.is_dir() else [partial_file]  # sharded: every file
        for path in files:
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 2)
                f.flush()
                os.fsync(f.fileno())
    kill_now()
