"""One weight reader (rfengine.weights) behind every entry point: train.init_from, rfengine.sample and
rfengine.export read the same files the same way: released SiT weights with a config saying which model
they fit, rfengine files alone, and a run folder's newest checkpoint that loads (a damaged newest one is
skipped everywhere)."""
import numpy as np
import pytest
import torch

from rfengine import checkpoint, config, export, sample, weights
from rfengine.models import build_model
from rfengine.trainer import Trainer
from tests.helpers import ROOT, tiny_cfg

RELEASED = ["--config", str(ROOT / "configs" / "tiny_fm.yaml"), "--set", "model.arch=DiT-T/4",
            "--set", "model.learn_sigma=true"]


@pytest.fixture
def released(tmp_path):
    """A released-style raw state dict (SiT's parameter names, learn_sigma: 2C output channels)."""
    torch.manual_seed(5)
    m = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10, learn_sigma=True)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path / "SiT-T-4.pt"
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, path)
    return path, m


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_init_from_reads_released_weights(released, tmp_path):
    path, want = released
    cfg = tiny_cfg(tmp_path / "run", "model.arch=DiT-T/4", "model.learn_sigma=true", f"train.init_from={path}",
                   "train.steps=1")
    tr = Trainer(cfg)
    assert _same(tr.model, want) and _same(tr.ema, want)


def test_sample_reads_released_weights_with_a_config_and_refuses_without(released, tmp_path, capsys):
    path, _ = released
    assert sample.sample_main(["--ckpt", str(path), *RELEASED, "--count", "3", "--steps", "2",
                               "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s" / "samples_ema_euler2_cfg1_n3_seed0.npz") as f:
        assert f["arr_0"].shape == (3, 16, 16, 1)
    assert sample.sample_main(["--ckpt", str(path), "--count", "3", "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert "rfengine: error:" in err and "without an rfengine config" in err and "--config" in err


def test_export_reads_released_weights_into_a_file_that_rebuilds_its_model(released, tmp_path):
    path, want = released
    assert export.main(["--ckpt", str(path), *RELEASED, "--out", str(tmp_path / "e.safetensors")]) == 0
    model, cfg, shape, meta = weights.load_model(tmp_path / "e.safetensors")
    assert _same(model, want) and shape == (1, 16, 16) and cfg.model.learn_sigma and meta["weights"] == "ema"


def test_a_damaged_newest_checkpoint_is_skipped_by_every_reader(tmp_path):
    Trainer(tiny_cfg(tmp_path, "train.steps=4", "train.ckpt_every=2")).run()
    ckpts = checkpoint.list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in ckpts] == [2, 4]
    ckpts[-1][1].write_bytes(ckpts[-1][1].read_bytes()[:1000])  # torn
    assert weights.resolve(tmp_path, None) == ckpts[0][1]
    assert export.main(["--run-dir", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 0
    _, _, _, meta = weights.load_model(tmp_path / "x.safetensors")
    assert meta["step"] == 2
    with pytest.raises(ValueError, match="exactly one of"):
        weights.resolve(tmp_path, "x.pt")


def test_a_config_given_for_a_released_file_must_fit(released):
    path, _ = released
    cfg = config.load(str(ROOT / "configs" / "tiny_fm.yaml"), ["model.arch=DiT-T/4"])  # learn_sigma false
    with pytest.raises(ValueError, match="set model.learn_sigma: true"):
        weights.load_model(path, "ema", cfg)
