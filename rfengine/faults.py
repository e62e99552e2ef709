"""Fault injection for the crash tests: `RFENGINE_FAULT=<point>@<step>` kills this process with
SIGKILL at a named point of step `<step>`, exactly as a machine loss or an OOM killer would.

Points: `after_step` (after the optimizer step, before logging), `checkpoint_write` (the checkpoint's
temporary file, or every file of a sharded checkpoint's temporary folder, is half written, not yet
renamed), `sample_chunk` (sampling: the process has written its `<step>`-th chunk of this run). Unset in
normal runs; reading it costs nothing. `RFENGINE_FAULT_RANK=<r>` arms it on rank `r` only (the others lose
a peer, as on a real machine loss). Under torchrun a fault fires in the job's first
attempt only (`TORCHELASTIC_RESTART_COUNT` 0), so that a group restarted by `--max-restarts` gets past it.

Slow storage: `hold_write` holds the checkpoint of that step between its write and its rename until
the file `<out>/release` appears (at most `RFENGINE_FAULT_HOLD` seconds, default 60, then it says so
on stderr and goes on): a test releases it once training has gone on, which it can only do if the
write is not in the training loop's way.

Storage faults (`disturb`, after the step, on rank 0, the run goes on): `fill_disk` writes
`<out>/filler` until the filesystem has `RFENGINE_FAULT_LEAVE` bytes free (default 200 kB: metrics
rows still fit, a checkpoint does not); `remove_dir` deletes the run's `checkpoints/` folder.
At one write site (`full_disk`, rank 0): `fill_disk_export` fills the disk just before the EMA
export of that step (and leaves it full); `fill_disk_grid` fills it for the sample grid of that
step only (a scratch disk that another job fills and frees), so the run can go on.
`read_only_dir` bind-mounts the `checkpoints/` folder over itself read-only (needs root; the whole
filesystem cannot be remounted read-only while the run has files open in it): the next checkpoint
meets a real `Read-only file system`. The test unmounts it afterwards.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

POINTS = ("after_step", "checkpoint_write", "sample_chunk", "hold_write", "fill_disk", "remove_dir", "read_only_dir", "fill_disk_export",
          "fill_disk_grid")


def armed(point: str, step: int) -> bool:
    spec = os.environ.get("RFENGINE_FAULT", "")
    if not spec:
        return False
    name, _, at = spec.partition("@")
    if name not in POINTS or not at.isdigit():
        raise ValueError(f"RFENGINE_FAULT={spec!r}: expected <point>@<step> with point in {POINTS}")
    if name != point or int(at) != step:
        return False
    rank = os.environ.get("RFENGINE_FAULT_RANK", "")
    if rank and rank != os.environ.get("RANK", "0"):
        return False
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


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


def before_rename(step: int, tmp: Path, out_dir: Path) -> None:
    """The checkpoint faults between a checkpoint's write and its rename (rank 0): `checkpoint_write`
    and `hold_write`."""
    maybe_crash("checkpoint_write", step, tmp)
    if armed("hold_write", step):
        release = Path(out_dir) / "release"
        deadline = time.monotonic() + float(os.environ.get("RFENGINE_FAULT_HOLD", 60))
        while not release.exists():
            if time.monotonic() > deadline:
                print(f"rfengine: fault hold_write@{step}: not released in time", file=sys.stderr, flush=True)
                return
            time.sleep(0.05)


def disturb(step: int, out_dir: Path, is_main: bool) -> None:
    """The storage faults at step `step` (rank 0 only; the run is not killed)."""
    if not is_main:
        return
    if armed("fill_disk", step):
        _fill(out_dir)
    if armed("read_only_dir", step):
        import subprocess
        folder = str(Path(out_dir) / "checkpoints")
        for cmd in (["mount", "--bind", folder, folder], ["mount", "-o", "remount,bind,ro", folder]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"rfengine: fault read_only_dir: cannot mount ({r.stderr.strip()})", file=sys.stderr, flush=True)
                return
    if armed("remove_dir", step):
        import shutil
        shutil.rmtree(Path(out_dir) / "checkpoints")


def _fill(out_dir: Path, leave: int | None = None) -> Path:
    """Fill the run folder's filesystem to `leave` bytes free. A checkpoint written in the background
    finishes first (its temporary file or folder is gone), so the fault hits the next write, not the
    one in flight; if another writer takes space meanwhile, the disk is full a little earlier."""
    import errno
    import shutil
    leave = int(os.environ.get("RFENGINE_FAULT_LEAVE", 200_000)) if leave is None else leave
    deadline = time.monotonic() + 60
    while any(".tmp-" in p.name for p in (Path(out_dir) / "checkpoints").glob(".step_*")) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    free = shutil.disk_usage(out_dir).free
    filler = Path(out_dir) / "filler"
    try:
        with open(filler, "wb") as f:
            f.write(b"\0" * max(free - leave, 0))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    return filler


@contextlib.contextmanager
def full_disk(point: str, step: int, out_dir: Path):
    """Around one write on rank 0: `fill_disk_export` fills the disk to the last byte and leaves it
    so; `fill_disk_grid` fills it for this write only."""
    if not armed(point, step):
        yield
        return
    filler = _fill(out_dir, leave=0)
    try:
        yield
    finally:
        if point == "fill_disk_grid":
            filler.unlink()
