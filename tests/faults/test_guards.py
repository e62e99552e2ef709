"""Non-finite guard and clean preemption."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rfengine import checkpoint
from rfengine.trainer import NonFiniteError, Trainer
from tests.helpers import ROOT, TINY, read_metrics, set_args, tiny_cfg, train_cli


def _poison(trainer, bad_batches):
    """Make the loss NaN on the given batches (counted from 1, skipped ones included)."""
    loss_fn = trainer.objective.loss

    def loss(model, x1, y, step):
        value, metrics = loss_fn(model, x1, y, step)
        if trainer.data_position in bad_batches:
            value = value * float("nan")
        return value, metrics
    trainer.objective.loss = loss


def test_nonfinite_loss_skips_the_step_and_counts_it(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=5"))
    _poison(tr, {2, 3})
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.run()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # 5 applied updates from 7 batches
    assert tr.data_position == 7
    assert rows[0]["bad_steps"] == 0 and rows[-1]["bad_steps"] == 2
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_nonfinite_gradient_is_caught_too(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=3"))

    def hook(g):
        if tr.data_position == 2:
            return g * float("inf")
        return g
    next(p for p in tr.model.parameters() if p.requires_grad).register_hook(hook)
    tr.run()
    assert read_metrics(tmp_path)[-1]["bad_steps"] == 1
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_too_many_bad_steps_stop_with_the_step_and_last_finite_loss(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=20", "train.max_bad_steps=3"))
    _poison(tr, set(range(4, 100)))
    with pytest.raises(NonFiniteError) as e:
        tr.run()
    last = read_metrics(tmp_path)[-1]
    assert last["step"] == 3
    msg = str(e.value)
    assert "3 consecutive non-finite steps at step 3" in msg
    assert f"last finite loss {last['loss']:.6g}" in msg


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_checkpoints_and_exits_0_then_resumes(tmp_path, sig):
    args = ["--config", "configs/tiny_fm.yaml", *set_args(*TINY, f"train.out_dir={tmp_path}", "train.steps=100000")]
    proc = subprocess.Popen([sys.executable, "-m", "rfengine.train", *args], cwd=ROOT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "Resume by running the same command with --resume auto" in err
    stopped = max(r["step"] for r in read_metrics(tmp_path))
    assert (tmp_path / "checkpoints" / f"step_{stopped:08d}.pt").is_file()

    r = train_cli(*args[:-2], "--set", f"train.steps={stopped + 2}", "--set", f"train.out_dir={tmp_path}",
                  "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["step"] for row in read_metrics(tmp_path)] == list(range(1, stopped + 3))


def test_signal_handlers_are_restored_when_the_run_fails_to_start(tmp_path):
    """The SIGTERM/SIGINT handlers live exactly as long as run(), even when its set-up raises."""
    import signal
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=2"))

    def broken(step):
        raise RuntimeError("telemetry could not start")
    tr.metrics.open = broken
    with pytest.raises(RuntimeError, match="telemetry could not start"):
        tr.run()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_stop_on_a_checkpoint_step_saves_that_step_once(tmp_path, mode):
    """A stop request that arrives on a checkpoint step completes the background save of that step; it
    does not write the step a second time (a sharded re-save would delete the folder and write it again,
    leaving no checkpoint at all with keep_ckpts 1 if the process died in between)."""
    from rfengine import checkpoint
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=6", "train.ckpt_every=2", "train.keep_ckpts=1",
                          f"parallel.mode={mode}"))
    saves = []
    real_save = tr.checkpoints.save
    tr.checkpoints.save = lambda wait=True: saves.append(tr.step) or real_save(wait)
    loss_fn = tr.objective.loss

    def loss(model, x1, y, step):
        if step == 3:  # the fourth step (a checkpoint step) sees the request
            tr.stop.requested = True
        return loss_fn(model, x1, y, step)
    tr.objective.loss = loss
    out = tr.run()
    assert out == {"step": 4, "stopped": True}
    assert saves == [2, 4], "step 4 was saved once, in the background, and completed"
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [4]
    assert checkpoint.load(checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1][1])["step"] == 4


def test_a_stop_during_skipped_steps_is_not_held_back(tmp_path):
    """A SIGTERM while the loss is non-finite: the run checkpoints the step it reached and stops at once,
    instead of waiting for a finite step (or for max_bad_steps to end it without a checkpoint)."""
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=8", "train.max_bad_steps=5"))
    _poison(tr, {3, 4, 5, 6, 7})
    step = tr.train_step

    def signalled(x1, y):
        if tr.data_position == 3:  # the first skipped batch
            os.kill(os.getpid(), signal.SIGTERM)
        return step(x1, y)
    tr.train_step = signalled
    out = tr.run()
    assert out == {"step": 2, "stopped": True}
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [2]
