"""FSDP2 on CPU (gloo, 2 processes): the same losses as DDP, composition with activation
checkpointing and per-block compile, sharded checkpoints that resume on another process count, and
the EMA export that loads into a one-process model."""
import re

import pytest
import torch

from rfengine import checkpoint
from rfengine.weights import load_model as _load


def load_model(path, weights="ema"):
    return _load(path, weights)[:3]
from rfengine.trainer import Trainer
from tests.helpers import TINY, losses, read_metrics, set_args, tiny_cfg, torchrun

BASE = [*TINY, "objective.name=reflexflow", "train.steps=4", "model.class_dropout=0.3"]


def _run(nproc, out, *extra):
    r = torchrun(nproc, "--config", "configs/tiny_fm.yaml", *set_args(*BASE, f"train.out_dir={out}", *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    return losses(out)


def _assert_close(got, want, rel):
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=rel), (step, got[step], want[step])


def test_fsdp_gives_the_losses_of_ddp_fp32(tmp_path):
    """Same data, noise and initial weights: sharding changes only the summation order of the gradient
    reduction, so losses and gradient norms agree to float32 rounding over the steps."""
    ddp = _run(2, tmp_path / "ddp")
    fsdp = _run(2, tmp_path / "fsdp", "parallel.mode=fsdp", "train.activation_checkpointing=selective")
    _assert_close(fsdp, ddp, rel=1e-4)
    log = (tmp_path / "fsdp" / "log.txt").read_text()
    assert "parallel fsdp" in log
    held, total = map(float, re.search(r"holds ([\d.]+)M of the ([\d.]+)M parameters", log).groups())
    assert held == pytest.approx(total / 2, rel=0.05)  # rank 0's shard: about half of every tensor


def test_fsdp_bf16_with_compile_and_checkpointing_tracks_ddp(tmp_path):
    """bf16 parameters gathered by FSDP vs autocast over fp32 weights under DDP: the same math with
    bf16 rounding in different places, so the losses agree to bf16 accuracy."""
    extra = ["train.precision=bf16", "train.compile=true", "train.activation_checkpointing=full"]
    ddp = _run(2, tmp_path / "ddp", *extra, "train.steps=3")
    fsdp = _run(2, tmp_path / "fsdp", *extra, "train.steps=3", "parallel.mode=fsdp")
    _assert_close(fsdp, ddp, rel=3e-2)


def test_fsdp_samples_mid_run_and_trains_on_unchanged(tmp_path):
    """A sample grid mid-run (the sharded EMA's forward, no backward) leaves the EMA sharded (it was
    left gathered at its root, and the next EMA update failed on full vs sharded tensors) and does
    not change training: the same losses as without the grid."""
    plain = _run(2, tmp_path / "plain", "parallel.mode=fsdp")
    sampled = _run(2, tmp_path / "sampled", "parallel.mode=fsdp", "train.sample_every=2")
    assert (tmp_path / "sampled" / "samples" / "step_00000002.png").is_file()
    assert sampled == plain


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """A 2-process FSDP run of 4 steps with sharded checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("fsdp2")
    _run(2, out, "parallel.mode=fsdp", "train.ckpt_every=2")
    return out


def test_sharded_checkpoint_layout_and_export(sharded_run):
    ckpts = checkpoint.list_checkpoints(sharded_run / "checkpoints")
    assert [(s, p.name) for s, p in ckpts] == [(2, "step_00000002"), (4, "step_00000004")]
    files = sorted(p.name for p in ckpts[-1][1].iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]  # one shard file per process
    meta = checkpoint.load(ckpts[-1][1])
    assert meta["step"] == 4 and meta["world_size"] == 2 and len(meta["rng"]) == 2 and meta["format"] == "dcp"
    # The exported EMA equals the sharded checkpoint's EMA read on one process.
    exported, cfg, shape = load_model(sharded_run / "ema.safetensors")
    from_shards, _, _ = load_model(ckpts[-1][1])
    assert shape == (1, 16, 16) and exported.num_classes == 10
    for (k, a), (_, b) in zip(exported.state_dict().items(), from_shards.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_sharded_checkpoint_saved_on_two_processes_resumes_on_one(tmp_path, sharded_run, mode):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(sharded_run, out)
    cfg = tiny_cfg(out, *BASE, "train.steps=6", f"parallel.mode={mode}")
    trainer = Trainer(cfg, resume="auto")
    assert trainer.step == 4 and trainer.data_position == 4
    ema, _ = checkpoint.load_safetensors(sharded_run / "ema.safetensors")
    for k, v in trainer.ema.state_dict().items():
        assert torch.equal(v, ema[k]), k  # whole tensors assembled from both processes' shards
    assert {float(s["step"]) for s in trainer.optimizer.state.values()} == {4.0}  # Adam's moments came along
    trainer.run()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert "written by 2 process(es), this run has 1" in (out / "log.txt").read_text()


def test_export_cli_writes_raw_weights_from_a_sharded_checkpoint(tmp_path, sharded_run, capsys):
    from rfengine import export
    out = tmp_path / "raw.safetensors"
    assert export.main(["--run-dir", str(sharded_run), "--weights", "raw", "--out", str(out)]) == 0
    raw, _, _ = load_model(out, "raw")
    want, _, _ = load_model(sharded_run / "checkpoints" / "step_00000004", "raw")
    for (k, a), (_, b) in zip(raw.state_dict().items(), want.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="holds the raw weights"):
        load_model(out, "ema")
    assert export.main(["--run-dir", str(tmp_path / "nothing")]) == 1
    assert "no checkpoint that loads in" in capsys.readouterr().err
