"""Exact resume: a run killed with SIGKILL (after a step, while a checkpoint is being written, or at a
random moment) and resumed with `--resume auto` logs the same losses, bit for bit, as a run that was
never interrupted. fp32 on CPU, one thread per process, 1-process and 2-process DDP."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, TINY, losses, read_metrics, set_args, torchrun, train_cli

STEPS = 12
RUN = [*TINY, f"train.steps={STEPS}", "train.ckpt_every=4", "train.keep_ckpts=2", "objective.name=reflexflow",
       "data.flip=true", "model.class_dropout=0.3"]


# ReflexFlow switched on after 5 FM steps, adr.prob ramped over 4 steps: the schedule depends on the step only.
SCHEDULED = ["objective.start=5", "objective.ramp=4"]


def _launch(nproc, out, *extra, env=None, mode="ddp", run=()):
    args = ["--config", "configs/tiny_fm.yaml", *set_args(*RUN, *run, f"train.out_dir={out}", f"parallel.mode={mode}"),
            *extra]
    if nproc == 1:
        return train_cli(*args, env=env)
    return torchrun(nproc, *args, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per process count, shared by the tests."""
    cache = {}

    def get(nproc, mode="ddp", run=()):
        key = (nproc, mode, tuple(run))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"straight{nproc}{mode}")
            r = _launch(nproc, out, mode=mode, run=run)
            assert r.returncode == 0, r.stderr[-3000:]
            cache[key] = losses(out)
            assert sorted(cache[key]) == list(range(1, STEPS + 1))
        return cache[key]
    return get


def _assert_same(resumed_dir, straight):
    got = losses(resumed_dir)
    assert sorted(got) == list(range(1, STEPS + 1)), "metrics.jsonl should read as one run"
    for step in range(1, STEPS + 1):
        assert got[step] == straight[step], f"step {step}: resumed {got[step]} != uninterrupted {straight[step]}"


@pytest.mark.parametrize("nproc, fault, resumed_from, mode", [
    (1, "after_step@6", 4, "ddp"),        # killed between checkpoints: steps 5-6 are redone
    (1, "checkpoint_write@8", 4, "ddp"),  # killed with step 8's checkpoint half written: it is never used
    (2, "after_step@6", 4, "ddp"),
    (2, "checkpoint_write@8", 4, "ddp"),
    (2, "checkpoint_write@8", 4, "fsdp"),  # sharded: every file of the folder half written
])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, reference, nproc, fault, resumed_from, mode):
    straight = reference(nproc, mode)
    crashed = _launch(nproc, tmp_path, env={"RFENGINE_FAULT": fault}, mode=mode)
    assert crashed.returncode != 0, "the fault should have killed the run"
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    if fault.startswith("checkpoint_write"):
        assert any(".tmp-" in name for name in ckpts), ckpts  # the torn temporary file is there
    assert max(r["step"] for r in read_metrics(tmp_path)) >= resumed_from

    resumed = _launch(nproc, tmp_path, "--resume", "auto", mode=mode)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    name = f"step_{resumed_from:08d}" + (".pt" if mode == "ddp" else "")
    assert f"{name} at step {resumed_from}" in log
    if fault.startswith("checkpoint_write"):
        assert "removed an incomplete checkpoint" in log
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]
    _assert_same(tmp_path, straight)


def test_sigkill_right_after_the_objective_switch_then_resume(tmp_path, reference):
    """Killed right after the first ReflexFlow steps of a scheduled run (FM for steps 1-5); the
    resumed run goes back to the FM checkpoint at step 4, crosses the switch again and matches."""
    straight = reference(1, run=SCHEDULED)
    crashed = _launch(1, tmp_path, env={"RFENGINE_FAULT": "after_step@7"}, run=SCHEDULED)
    assert crashed.returncode != 0, "the fault should have killed the run"
    rows = {r["step"]: r for r in read_metrics(tmp_path)}
    assert "loss_adr" not in rows[5] and "loss_adr" in rows[6]  # step 6 was the first ReflexFlow step
    resumed = _launch(1, tmp_path, "--resume", "auto", run=SCHEDULED)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000004.pt at step 4" in (tmp_path / "log.txt").read_text()
    _assert_same(tmp_path, straight)
    assert [read_metrics(tmp_path)[i].get("adr_prob") for i in range(4, 10)] == [None, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_sigkill_at_a_random_moment_then_resume(tmp_path, reference):
    """An outside SIGKILL at a random step; the seed is in the failure message."""
    straight = reference(1)
    seed = int(os.environ.get("RFENGINE_TEST_SEED", random.randrange(10**6)))
    kill_at = random.Random(seed).randint(2, STEPS - 1)
    args = ["--config", "configs/tiny_fm.yaml", *set_args(*RUN, f"train.out_dir={tmp_path}", "train.ckpt_every=2")]
    proc = subprocess.Popen([sys.executable, "-m", "rfengine.train", *args], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= kill_at:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"seed {seed}: the run ended (exit {proc.returncode}) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the first process was not killed (exit {proc.returncode})"
    assert metrics.exists() and metrics.read_text().count("\n") >= kill_at, f"seed {seed}: killed before step {kill_at}"
    resumed = train_cli(*args, "--resume", "auto")
    assert resumed.returncode == 0, f"seed {seed}: " + resumed.stderr[-3000:]
    try:
        _assert_same(tmp_path, straight)
    except AssertionError as e:
        raise AssertionError(f"killed near step {kill_at} (RFENGINE_TEST_SEED={seed}): {e}") from None
