"""Exact resume: a run killed with SIGKILL (after a step, while a checkpoint is being written, or at a
random moment) and resumed with `--resume auto` logs the same losses, bit for bit, as a run that was
never interrupted; a rank killed under `torchrun --max-restarts` is restarted with its group, which
resumes by itself and ends with the uninterrupted run's weights. fp32 on CPU, one thread per process,
1-process and 2-process DDP and FSDP; the uninterrupted runs are the session's (`straight`)."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.faults.runs import RUN, STEPS, launch
from tests.helpers import ROOT, losses, read_metrics, set_args, train_cli

KEEP = ["train.keep_ckpts=2"]
# ReflexFlow switched on after 5 FM steps, adr.prob ramped over 4 steps: the schedule depends on the step only.
SCHEDULED = ["objective.start=5", "objective.ramp=4"]


def _launch(nproc, out, *extra, env=None, mode="ddp", run=(), restarts=0):
    return launch(nproc, out, *extra, env=env, mode=mode, run=(*KEEP, *run), restarts=restarts)


def _assert_same(resumed_dir, straight_dir):
    got, want = losses(resumed_dir), losses(straight_dir)
    assert sorted(got) == list(range(1, STEPS + 1)), "metrics.jsonl should read as one run"
    for step in range(1, STEPS + 1):
        assert got[step] == want[step], f"step {step}: resumed {got[step]} != uninterrupted {want[step]}"


@pytest.mark.parametrize("nproc, fault, resumed_from, mode", [
    (1, "after_step@6", 4, "ddp"),        # killed between checkpoints: steps 5-6 are redone
    (1, "checkpoint_write@8", 4, "ddp"),  # killed with step 8's checkpoint half written: it is never used
    # (2 processes killed between checkpoints: the torchrun restart tests below, DDP and FSDP)
    (2, "checkpoint_write@8", 4, "ddp"),
    (2, "checkpoint_write@8", 4, "fsdp"),  # sharded: every file of the folder half written
])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, straight, nproc, fault, resumed_from, mode):
    reference = straight(nproc, mode)
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
    _assert_same(tmp_path, reference)


def test_sigkill_right_after_the_objective_switch_then_resume(tmp_path, straight):
    """Killed right after the first ReflexFlow steps of a scheduled run (FM for steps 1-5); the
    resumed run goes back to the FM checkpoint at step 4, crosses the switch again and matches."""
    reference = straight(1, run=SCHEDULED)
    crashed = _launch(1, tmp_path, env={"RFENGINE_FAULT": "after_step@7"}, run=SCHEDULED)
    assert crashed.returncode != 0, "the fault should have killed the run"
    rows = {r["step"]: r for r in read_metrics(tmp_path)}
    assert "loss_adr" not in rows[5] and "loss_adr" in rows[6]  # step 6 was the first ReflexFlow step
    resumed = _launch(1, tmp_path, "--resume", "auto", run=SCHEDULED)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000004.pt at step 4" in (tmp_path / "log.txt").read_text()
    _assert_same(tmp_path, reference)
    assert [read_metrics(tmp_path)[i].get("adr_prob") for i in range(4, 10)] == [None, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_sigkill_at_a_random_moment_then_resume(tmp_path, straight):
    """An outside SIGKILL at a random step; the seed is in the failure message."""
    reference = straight(1)
    seed = int(os.environ.get("RFENGINE_TEST_SEED", random.randrange(10**6)))
    kill_at = random.Random(seed).randint(2, STEPS - 1)
    args = ["--config", "configs/tiny_fm.yaml", *set_args(*RUN, *KEEP, f"train.out_dir={tmp_path}", "train.ckpt_every=2")]
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
        _assert_same(tmp_path, reference)
    except AssertionError as e:
        raise AssertionError(f"killed near step {kill_at} (RFENGINE_TEST_SEED={seed}): {e}") from None


def _final_weights(run, mode):
    """The raw weights of the last checkpoint and the exported EMA weights of a finished run."""
    from rfengine.weights import load_model
    last = run / "checkpoints" / (f"step_{STEPS:08d}" + (".pt" if mode == "ddp" else ""))
    return {"raw": load_model(last, "raw")[0].state_dict(), "ema": load_model(run / "ema.safetensors")[0].state_dict()}


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_restarts_a_killed_rank_and_the_run_resumes_exactly(tmp_path, straight, mode):
    """One command serves the first start and every restart: `torchrun --max-restarts=1 ... --resume auto`
    on a fresh folder starts fresh; rank 1 is SIGKILLed after step 6 (step 4's checkpoint is the newest);
    torchrun restarts both processes, their group forms again, resumes from step 4 and ends with the
    weights of a run that was never interrupted, bit for bit."""
    reference = straight(2, mode)
    r = _launch(2, tmp_path, "--resume", "auto", mode=mode, restarts=1,
                env={"RFENGINE_FAULT": "after_step@6", "RFENGINE_FAULT_RANK": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exitcode: -9" in r.stderr, "rank 1 should have been killed once"
    log = (tmp_path / "log.txt").read_text()  # both attempts append to it
    assert "--resume auto: no checkpoint" in log and "starting fresh" in log
    name = "step_00000004" + (".pt" if mode == "ddp" else "")
    assert f"{name} at step 4" in log
    _assert_same(tmp_path, reference)
    got, want = _final_weights(tmp_path, mode), _final_weights(reference, mode)
    for kind in ("raw", "ema"):
        assert all(torch.equal(got[kind][k], want[kind][k]) for k in want[kind]), kind


def test_each_torchrun_attempt_forms_its_group_in_a_store_namespace_of_its_own(monkeypatch):
    """torchrun's agent keeps one store for every attempt: what the dead attempt's ranks wrote (their
    addresses) must not be what a restarted rank reads."""
    import torch.distributed as dist

    from rfengine import parallel
    agent = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    for key, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(agent.port), "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    parallel._attempt_store(0, 2).set("default_pg/0//cpu/rank_1", "the dead attempt's address")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not parallel._attempt_store(0, 2).check(["default_pg/0//cpu/rank_1"])
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # a store of its own per attempt: env:// as it is
    assert parallel._attempt_store(0, 2) is None
