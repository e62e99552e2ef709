"""End-to-end training: the loss falls, every objective trains, DDP runs, the run folder is complete."""
import pytest

import kernels
from rfengine.objectives import reflexflow, ss
from rfengine.trainer import Trainer
from tests.helpers import TINY, read_metrics, tiny_cfg, torchrun


def test_short_run_loss_falls_and_leaves_a_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "train.steps=60", "train.batch_size=32", "model.arch=DiT-T/2", "optim.warmup_steps=5",
                   "train.ckpt_every=30", "train.sample_every=30")
    summary = Trainer(cfg).run()
    assert summary["step"] == 60
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 61))
    for key in ("loss", "lr", "grad_norm", "images_per_s"):
        assert key in rows[0]
    first = sum(r["loss"] for r in rows[:10]) / 10
    last = sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.75 * first, (first, last)
    assert rows[0]["lr"] < rows[-1]["lr"] == pytest.approx(1e-3)  # warm-up
    assert (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000030.pt", "step_00000060.pt"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000030.png", "step_00000060.png"]


@pytest.mark.parametrize("name", ["ip", "ss", "reflexflow"])
def test_each_objective_trains_and_computes_its_logged_metrics_on_the_logged_steps_only(tmp_path, monkeypatch, name):
    """log_every 3 over 4 steps logs steps 3 and 4 (the last). The metrics an objective computes only to be
    logged (the rollout's statistics, FC's weights) are computed on exactly those steps, and are in their rows."""
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=4", "train.log_every=3", f"objective.name={name}"))
    calls = {"rollout_metrics": [], "fc_weight": []}

    def count(module, fn):
        real = getattr(module, fn)
        monkeypatch.setattr(module, fn, lambda *a, **k: calls[fn].append(tr.step + 1) or real(*a, **k))
    count(reflexflow, "rollout_metrics"), count(ss, "rollout_metrics"), count(kernels, "fc_weight")
    tr.run()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [3, 4]
    keys = {"ip": (), "ss": ("delta_x_sq", "s_mean", "gap_mean"),
            "reflexflow": ("loss_fc", "loss_adr", "fc_w_mean", "fc_w_max", "delta_x_sq", "s_mean", "gap_mean")}[name]
    for row in rows:
        assert set(keys) <= set(row), (row["step"], set(keys) - set(row))
    assert calls["rollout_metrics"] == ([] if name == "ip" else [3, 4])
    assert calls["fc_weight"] == ([3, 4] if name == "reflexflow" else [])


def test_bf16_autocast_runs(tmp_path):
    Trainer(tiny_cfg(tmp_path, "train.steps=3", "train.precision=bf16", "objective.name=reflexflow")).run()
    assert len(read_metrics(tmp_path)) == 3


def test_torchrun_two_process_ddp(tmp_path):
    r = torchrun(2, "--config", "configs/tiny_fm.yaml", *[a for s in TINY for a in ("--set", s)],
                 "--set", "train.steps=6", "--set", f"train.out_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert "2 process(es)" in (tmp_path / "log.txt").read_text()


def test_torchrun_reflexflow_config(tmp_path):
    r = torchrun(1, "--config", "configs/tiny_reflexflow.yaml", "--set", "train.steps=3",
                 "--set", "train.progress=false", "--set", "train.log_every=1", "--set", f"train.out_dir={tmp_path}",
                 "--set", "sample.steps=2", "--set", "sample.num_images=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loss_adr" in read_metrics(tmp_path)[-1]
