"""Storage faults: a run folder too small or not writable is refused before any work; a disk that
fills up, a folder that vanishes or a failed metrics write mid-run ends with one `rfengine: error:`
line naming the file, the cause and the checkpoint to resume from, leaves no temporary file, and
`--resume auto` continues bit-exactly once the cause is gone; a sample grid or TensorBoard that
cannot be written is a warning; a slow checkpoint write does not hold training. Real faults where
mounting works (CI runs as root): a small tmpfs filled mid-run, a checkpoints folder bind-mounted
read-only mid-run (several faults one after the other on one run folder, each resumed from the
checkpoint it names); injected OSErrors otherwise; 1 process, 2-process DDP and FSDP."""
import contextlib
import errno
import shutil
import subprocess

import pytest
import torch

from rfengine import storage
from rfengine.trainer import Trainer
from tests.faults import runs
from tests.faults.runs import STEPS
from tests.helpers import TINY, losses, set_args, tiny_cfg, torchrun, train_cli

RUN = [*runs.RUN, "train.keep_ckpts=1"]


@contextlib.contextmanager
def tmpfs(path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the injected-error tests cover this")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("rfengine: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _no_temporaries(folder):
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------------------------------------
# Pre-flight: refused before any work, nothing created
# ---------------------------------------------------------------------------------------------

def test_too_small_a_filesystem_is_refused_before_anything_is_created(tmp_path):
    with tmpfs(tmp_path / "small", "8m") as mnt:
        r = train_cli("--config", "configs/tiny_fm.yaml", *set_args(*RUN, "train.keep_ckpts=3", f"train.out_dir={mnt}/run"))
        assert r.returncode == 1
        line = _one_error_line(r.stderr)
        assert f"{mnt}/run needs" in line and "MB free" in line and "4 checkpoints of 5.6 MB" in line
        assert not any(mnt.iterdir()), "nothing may be created"


def test_preflight_with_injected_free_space_and_read_only_folder(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=3_000_000))
    with pytest.raises(storage.WriteError, match=r"needs \d+\.\d MB .* 3\.0 MB free"):
        Trainer(tiny_cfg(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(shutil, "disk_usage", real)
    monkeypatch.setattr(storage.os, "access", lambda p, mode: False)
    with pytest.raises(storage.WriteError, match="is not writable"):
        Trainer(tiny_cfg(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_estimate_matches_a_real_checkpoint(tmp_path):
    from rfengine import checkpoint
    from rfengine.run.build import build_model
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=1", "model.arch=DiT-T/2"))
    tr.run()
    real = checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1][1].stat().st_size
    with torch.device("meta"):
        est = checkpoint.estimate_bytes(build_model(tr.cfg, tr.dataset.shape, tr.dataset.num_classes, "meta"))
    assert real <= est <= 1.1 * real


# ---------------------------------------------------------------------------------------------
# Mid-run faults: one clear error, no temporaries, exact resume
# ---------------------------------------------------------------------------------------------

def _launch(nproc: int, out, *extra: str, env: dict | None = None, mode: str = "ddp"):
    """`RUN` into `out` on `nproc` processes (`runs.launch`)."""
    return runs.launch(nproc, out, *extra, env=env, mode=mode, run=RUN[len(runs.RUN):])


def _stops_when_the_checkpoint_folder_turns_read_only(nproc: int, mode: str, out) -> None:
    """A real read-only folder mid-run: `--resume auto` (a fresh run, or one resumed from step 4) with the
    checkpoints folder bind-mounted read-only over itself at step 7, well after the step-4 write is done. Every
    process stops with one line naming the step-8 checkpoint, `Read-only file system` and the step-4
    checkpoint, and no temporary file is left; the folder is writable again afterwards."""
    try:
        r = _launch(nproc, out, "--resume", "auto", env={"RFENGINE_FAULT": "read_only_dir@7"}, mode=mode)
        if "fault read_only_dir: cannot mount" in r.stderr:
            why = next(x for x in r.stderr.splitlines() if "cannot mount" in x)
            pytest.skip(f"{why}; the injected EROFS test covers read-only folders")
        assert r.returncode != 0
        assert r.stderr.count("rfengine: error: writing") == nproc, r.stderr[-3000:]
        line = next(x for x in r.stderr.splitlines() if x.startswith("rfengine: error:"))
        assert "step_00000008" in line and "Read-only file system" in line and "step_00000004" in line, line
    finally:
        subprocess.run(["umount", str(out / "checkpoints")], capture_output=True)
    assert _no_temporaries(out)


def test_disk_fills_then_the_folder_turns_read_only_then_resume_is_exact(tmp_path, straight):
    """One process, two storage faults one after the other on one run folder (a 16 MB tmpfs), each resumed
    from the checkpoint its error line names: the disk fills up at step 5, so the step-8 checkpoint meets `No
    space left on device`; once the filler is gone, the resumed run finds its checkpoints folder read-only
    (`_stops_when_the_checkpoint_folder_turns_read_only`); once writable again, the run resumed a second time
    logs the losses of a run that was never stopped, bit for bit."""
    with tmpfs(tmp_path / "fs", "16m") as mnt:
        out = mnt / "run"
        r = _launch(1, out, env={"RFENGINE_FAULT": "fill_disk@5"})
        assert r.returncode == 1, r.stderr[-3000:]
        line = _one_error_line(r.stderr)
        assert "step_00000008.pt failed: No space left on device" in line, line
        assert "the last complete checkpoint is" in line and "step_00000004.pt (step 4)" in line
        assert "--resume auto" in line and _no_temporaries(out)
        (out / "filler").unlink()
        _stops_when_the_checkpoint_folder_turns_read_only(1, "ddp", out)
        r = _launch(1, out, "--resume", "auto")
        assert r.returncode == 0, r.stderr[-3000:]
        got, want = losses(out), losses(straight(1))
        assert [got[s] for s in range(1, STEPS + 1)] == [want[s] for s in range(1, STEPS + 1)]


def test_injected_enospc_on_checkpoint_and_export(tmp_path, monkeypatch):
    import rfengine.checkpoint.background as ck  # torch.save of the checkpoint writer
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(ck.torch, "save", failing_save)
    tr = Trainer(tiny_cfg(tmp_path, *RUN[len(TINY):]))
    with pytest.raises(storage.WriteError) as e:
        tr.run()
    msg = str(e.value)
    assert "step_00000008.pt failed: No space left on device" in msg and "step_00000004.pt (step 4)" in msg
    assert _no_temporaries(tmp_path)
    monkeypatch.setattr(ck.torch, "save", real_save)

    def failing_export(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "save_file", failing_export)
    tr = Trainer(tiny_cfg(tmp_path / "b", "train.steps=2"))
    with pytest.raises(storage.WriteError, match="ema.safetensors failed: Read-only file system"):
        tr.run()


@pytest.mark.parametrize("nproc", [1, 2])
def test_vanished_checkpoint_folder_is_an_error_not_recreated(tmp_path, nproc):
    out = tmp_path / "run"
    args = ["--config", "configs/tiny_fm.yaml", *set_args(*RUN, f"train.out_dir={out}")]
    env = {"RFENGINE_FAULT": "remove_dir@5"}
    r = train_cli(*args, env=env) if nproc == 1 else torchrun(2, *args, env=env, timeout=240)
    assert r.returncode != 0
    assert r.stderr.count("rfengine: error: writing") == nproc, r.stderr[-3000:]  # every process, one line
    line = next(x for x in r.stderr.splitlines() if x.startswith("rfengine: error:"))
    assert "step_00000008.pt failed: No such file or directory: the folder" in line and "was removed" in line
    assert "no complete checkpoint was written yet" in line
    assert not (out / "checkpoints").exists()


def test_two_process_metrics_write_failure_stops_every_process(tmp_path):
    """A disk with no room left even for a metrics row: rank 0's failed metrics.jsonl write reaches
    the other process through the step's flags, and both stop."""
    with tmpfs(tmp_path / "fs", "16m") as mnt:
        out = mnt / "run"
        r = torchrun(2, "--config", "configs/tiny_fm.yaml", *set_args(*RUN, f"train.out_dir={out}"),
                     env={"RFENGINE_FAULT": "fill_disk@5", "RFENGINE_FAULT_LEAVE": "0"}, timeout=240)
        assert r.returncode != 0
        assert r.stderr.count("rfengine: error: writing") == 2, r.stderr[-3000:]
        assert "metrics.jsonl failed: No space left on device" in r.stderr
        assert "step_00000004.pt (step 4)" in r.stderr


def test_metrics_write_failure_stops_the_run(tmp_path, monkeypatch):
    from rfengine import telemetry
    real = telemetry.MetricsFile.write

    def write(self, row):
        if row["step"] == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, row)
    monkeypatch.setattr(telemetry.MetricsFile, "write", write)
    tr = Trainer(tiny_cfg(tmp_path, *RUN[len(TINY):]))
    with pytest.raises(storage.WriteError, match=r"metrics.jsonl failed: No space left on device; the last "
                                                 r"complete checkpoint is .*step_00000004.pt \(step 4\)"):
        tr.run()
    assert tr.step == 6


def test_sample_grid_and_tensorboard_failures_are_warnings(tmp_path, monkeypatch, capfd):
    import rfengine.run.grids as grids_mod

    def no_grid(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(grids_mod, "save_grid", no_grid)
    from torch.utils.tensorboard import SummaryWriter

    def no_scalar(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(SummaryWriter, "add_scalar", no_scalar)
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=4", "train.sample_every=2", "train.tensorboard=true"))
    assert tr.run()["step"] == 4
    text = capfd.readouterr().err  # the trainer's log handler writes to stderr
    assert "sample grid not written" in text and "No space left on device" in text and "training goes on" in text
    assert "TensorBoard events not written" in text


# ---------------------------------------------------------------------------------------------
# Two processes: every process stops (no hang), one error line each
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_disk_full_stops_every_process(tmp_path, mode):
    """DDP: rank 0 writes the file, both agree on its failure. FSDP: both write shards into a
    temporary folder, which is removed; the sharded checkpoint folder is complete or absent."""
    with tmpfs(tmp_path / "fs", "24m") as mnt:
        out = mnt / "run"
        r = torchrun(2, "--config", "configs/tiny_fm.yaml", *set_args(*RUN, f"train.out_dir={out}", f"parallel.mode={mode}"),
                     env={"RFENGINE_FAULT": "fill_disk@5"}, timeout=240)
        assert r.returncode != 0
        name = "step_00000008.pt" if mode == "ddp" else "step_00000008"
        assert "failed: No space left on device" in r.stderr and name in r.stderr, r.stderr[-3000:]
        ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert ckpts == ["step_00000004" + (".pt" if mode == "ddp" else "")], ckpts
        assert r.stderr.count("rfengine: error: writing") == 2, r.stderr[-3000:]  # both processes stopped, one line each
        assert _no_temporaries(out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_read_only_folder_then_export_on_a_full_disk_then_resume(tmp_path, mode, straight):
    """Two processes, two storage faults one after the other on one run folder (a 24 MB tmpfs), each resumed
    by `--resume auto`: the checkpoints folder turns read-only mid-run (`_stops_when_the_checkpoint_folder_turns_read_only`);
    once writable again, the resumed run logs the losses of a run that was never stopped, bit for bit, and
    then the disk fills just before its EMA export (gathered from every process under FSDP): both processes
    stop with one line naming ema.safetensors and the final checkpoint; once space is freed, `--resume auto`
    writes the export (the run's weights are all in that checkpoint)."""
    with tmpfs(tmp_path / "fs", "24m") as mnt:
        out = mnt / "run"
        _stops_when_the_checkpoint_folder_turns_read_only(2, mode, out)
        r = _launch(2, out, "--resume", "auto", env={"RFENGINE_FAULT": f"fill_disk_export@{STEPS}"}, mode=mode)
        assert r.returncode != 0
        assert r.stderr.count("rfengine: error: writing") == 2, r.stderr[-3000:]
        line = next(x for x in r.stderr.splitlines() if x.startswith("rfengine: error:"))
        assert "ema.safetensors failed: No space left on device" in line, line
        assert f"step_{STEPS:08d}" in line
        assert losses(out) == losses(straight(2, mode))
        assert not (out / "ema.safetensors").exists() and _no_temporaries(out)
        (out / "filler").unlink()
        r = _launch(2, out, "--resume", "auto", mode=mode)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (out / "ema.safetensors").is_file() and _no_temporaries(out)


def test_cause_reads_the_os_error_inside_a_dcp_checkpoint_exception(tmp_path):
    """DCP wraps each process's error in a CheckpointException (a BaseException holding rank ->
    (exception, traceback)); the cause named is the OS's own, or the inner error, not the wrapper."""
    from torch.distributed.checkpoint.api import CheckpointException
    full = CheckpointException("save", {0: (OSError(errno.ENOSPC, "No space left on device"), None)})
    assert storage.cause(full, tmp_path / "x") == "No space left on device"
    other = CheckpointException("save", {1: (RuntimeError("shard 3 has a bad shape"), None)})
    assert storage.cause(other, tmp_path / "x") == "RuntimeError: shard 3 has a bad shape"


def test_two_processes_grid_on_a_full_disk_is_a_warning(tmp_path):
    """The disk is full while the step-4 sample grid is written (FSDP: every process samples, rank 0
    writes): a warning, no half-written PNG, and the run finishes on both processes."""
    with tmpfs(tmp_path / "fs", "24m") as mnt:
        out = mnt / "run"
        r = torchrun(2, "--config", "configs/tiny_fm.yaml",
                     *set_args(*RUN, f"train.out_dir={out}", "parallel.mode=fsdp", "train.sample_every=4",
                               "train.ckpt_every=12"),  # no checkpoint in flight while the disk is full
                     env={"RFENGINE_FAULT": "fill_disk_grid@4"}, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "sample grid not written" in r.stderr and "step_00000004.png failed: No space left on device" in r.stderr
        assert "rfengine: error" not in r.stderr
        grids = sorted(p.name for p in (out / "samples").iterdir())
        assert grids == ["step_00000008.png", f"step_{STEPS:08d}.png"], grids
        assert (out / "ema.safetensors").is_file() and _no_temporaries(out)


# ---------------------------------------------------------------------------------------------
# Slow storage: single-file checkpoints are written in the background
# ---------------------------------------------------------------------------------------------

def test_training_goes_on_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    """A checkpoint write that does not finish until training has logged two more steps: with the
    background writer the run gets there (a synchronous write would wait for ever, here 60 s)."""
    import threading

    import rfengine.checkpoint.background as ck  # torch.save of the checkpoint writer
    from rfengine import telemetry
    released, timed_out = threading.Event(), []
    real_save, real_write = torch.save, telemetry.MetricsFile.write

    def slow_save(obj, f, *a, **k):
        if obj.get("step") == 2 and not released.wait(timeout=60):
            timed_out.append(True)
        return real_save(obj, f, *a, **k)

    def write(self, row):
        real_write(self, row)
        if row["step"] == 4:
            released.set()
    monkeypatch.setattr(ck.torch, "save", slow_save)
    monkeypatch.setattr(telemetry.MetricsFile, "write", write)
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=6", "train.ckpt_every=2", "train.keep_ckpts=5"))
    tr.run()
    assert not timed_out, "training waited for the checkpoint write"
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000002.pt", "step_00000004.pt", "step_00000006.pt"]
    from rfengine import checkpoint
    assert checkpoint.load(tmp_path / "checkpoints" / "step_00000002.pt")["step"] == 2  # the state of step 2


@pytest.mark.parametrize("mode", ["single", "fsdp"])
def test_held_checkpoint_does_not_hold_training(tmp_path, mode):
    """Slow storage, as processes: the step-4 checkpoint is held before its rename (fault
    `hold_write`) until this test sees training log step 7; then it is released and must appear
    complete. A write in the training loop's way would never let step 7 come (the hold gives up
    after 60 s and says so). Single file on one process; sharded (DCP async_save) on two."""
    import json
    import os
    import sys
    import time

    from tests.helpers import ROOT
    out = tmp_path / "run"
    over = set_args(*RUN, "train.log_every=1", f"train.out_dir={out}", "objective.name=fm",
                    *(["parallel.mode=fsdp"] if mode == "fsdp" else []))
    pre = [sys.executable, "-m", "rfengine.train"] if mode == "single" else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "rfengine/train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RFENGINE_FAULT": "hold_write@4"}
    proc = subprocess.Popen([*pre, "--config", "configs/tiny_fm.yaml", *over], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = 0, time.monotonic() + 120
    while seen < 7 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
        seen = max([json.loads(r)["step"] for r in rows if r.strip()] or [0])
    held = not (out / "checkpoints" / ("step_00000004" + (".pt" if mode == "single" else ""))).exists()
    (out / "release").touch()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert seen >= 7 and held, (seen, held, err[-2000:])  # step 7 came while step 4's checkpoint was held
    assert "not released in time" not in err
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == (["step_00000012.pt"] if mode == "single" else ["step_00000012"])  # keep_ckpts=1 pruned 4, 8
    assert _no_temporaries(out)


def test_a_failed_background_write_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
    import rfengine.checkpoint.background as ck  # torch.save of the checkpoint writer
    real_save = torch.save

    def failing(obj, f, *a, **k):
        if obj.get("step") == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(ck.torch, "save", failing)
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=12", "train.ckpt_every=2", "train.keep_ckpts=5"))
    with pytest.raises(storage.WriteError, match=r"step_00000004.pt failed: No space left on device; the last "
                                                 r"complete checkpoint is .*step_00000002.pt \(step 2\)"):
        tr.run()
    assert 4 <= tr.step < 12 and _no_temporaries(tmp_path)  # stopped within a step or so of the failure
