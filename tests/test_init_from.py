"""Starting a new run from weights (`train.init_from`): every file kind that holds model weights,
strict key/shape checks, learn_sigma, and the difference from `--resume`."""
import argparse

import pytest
import torch

from rfengine import checkpoint, config, weights
from rfengine.models import build_model
from rfengine.trainer import Trainer
from tests.helpers import tiny_cfg


def _model(**kw):
    torch.manual_seed(123)
    m = build_model(kw.pop("arch", "DiT-T/4"), in_channels=1, input_size=16, num_classes=10, **kw)
    for p in m.parameters():  # away from the adaLN-Zero init, so that a load is visible
        p.data.normal_(0, 0.05)
    return m


def _same(model, state):
    own = checkpoint.strip_prefixes(model.state_dict())
    return all(torch.equal(own[k], v) for k, v in state.items())


def test_released_sit_state_dict_starts_a_fresh_run(tmp_path):
    """SiT/DiT release their EMA weights as a raw state dict under these parameter names."""
    src = _model()
    state = src.state_dict()
    for name in ("x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.embedding_table.weight",
                 "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.1.adaLN_modulation.1.weight",
                 "final_layer.linear.weight", "pos_embed"):
        assert name in state  # SiT's names, so released files load without renaming
    torch.save(state, tmp_path / "SiT-T-4.pt")
    cfg = tiny_cfg(tmp_path / "run", f"train.init_from={tmp_path / 'SiT-T-4.pt'}", "train.steps=2")
    tr = Trainer(cfg)
    assert tr.step == 0 and not tr.optimizer.state  # a new run: step 0, fresh optimizer
    assert _same(tr.model, state) and _same(tr.ema, state)
    summary = tr.run()
    assert "raw state dict" in summary["init_from"]
    assert config.load(tmp_path / "run" / "config.yaml").train.init_from == str(tmp_path / "SiT-T-4.pt")


@pytest.mark.parametrize("which", ["ema", "raw"])
def test_sit_training_checkpoint_dict_picks_ema_or_model(tmp_path, which):
    a, b = _model(), _model()
    for p in b.parameters():
        p.data.add_(1.0)
    torch.save({"model": a.state_dict(), "ema": b.state_dict(), "opt": {}, "args": argparse.Namespace(lr=1)},
               tmp_path / "0400000.pt")
    m, e = _model(), _model()
    what = weights.init_weights(m, e, tmp_path / "0400000.pt", which)
    assert _same(m, (b if which == "ema" else a).state_dict()) and f"{which} weights" in what


def test_rfengine_checkpoint_export_and_sharded_folder(tmp_path):
    cfg = tiny_cfg(tmp_path / "a", "train.steps=3")
    tr = Trainer(cfg)
    tr.run()
    ema = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    raw = {k: v.clone() for k, v in tr.model.state_dict().items()}
    pt = checkpoint.list_checkpoints(tmp_path / "a" / "checkpoints")[-1][1]
    for path, which, want in [(pt, "ema", ema), (pt, "raw", raw), (tmp_path / "a" / "ema.safetensors", "ema", ema)]:
        m, e = _model(), _model()
        weights.init_weights(m, e, path, which)
        assert _same(m, want) and _same(e, want), (path, which)
    with pytest.raises(ValueError, match="holds the ema weights, not"):
        weights.init_weights(_model(), _model(), tmp_path / "a" / "ema.safetensors", "raw")
    folder = tmp_path / "sharded" / "step_00000003"
    checkpoint.save_sharded({"model": raw, "ema": ema}, {"step": 3}, folder, True)
    m, e = _model(), _model()
    assert "sharded" in weights.init_weights(m, e, folder, "ema") and _same(m, ema)


def test_mismatches_are_named_in_one_error(tmp_path):
    torch.save(_model(arch="DiT-T/2").state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError) as e:
        weights.init_weights(_model(), _model(), tmp_path / "other.pt", "ema")
    msg = str(e.value)
    assert "init_from" in msg and "shape mismatches" in msg and "x_embedder.proj.weight" in msg
    state = _model().state_dict()
    state.pop("blocks.0.attn.qkv.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(ValueError) as e:
        weights.init_weights(_model(), _model(), tmp_path / "keys.pt", "ema")
    assert "missing keys (1): blocks.0.attn.qkv.weight" in str(e.value)
    assert "unexpected keys (1): extra.weight" in str(e.value)
    torch.save({"args": 1, "opt": {}}, tmp_path / "noweights.pt")
    with pytest.raises(ValueError, match="holds no 'ema' weights"):
        weights.init_weights(_model(), _model(), tmp_path / "noweights.pt", "ema")


def test_learn_sigma_checkpoints(tmp_path):
    sigma = _model(learn_sigma=True)
    torch.save(sigma.state_dict(), tmp_path / "sigma.pt")
    with pytest.raises(ValueError, match="learn_sigma: true"):
        weights.init_weights(_model(), _model(), tmp_path / "sigma.pt", "ema")
    m = _model(learn_sigma=True)
    weights.init_weights(m, _model(learn_sigma=True), tmp_path / "sigma.pt", "ema")
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([1, 2])
    assert torch.equal(m(x, t, y), sigma(x, t, y)) and m(x, t, y).shape == (2, 1, 16, 16)  # velocity = first C
    torch.save(_model().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="learn_sigma: false"):
        weights.init_weights(_model(learn_sigma=True), _model(learn_sigma=True), tmp_path / "plain.pt", "ema")


def test_a_missing_file_stops_the_start_and_resume_never_reads_it(tmp_path):
    """A run that starts from a missing file stops with one error naming the key; a resumed run continues
    from its checkpoint, not from init_from, and does not even read it (here it is gone by then)."""
    with pytest.raises(ValueError, match="train.init_from: no such file or folder: /nonexistent/weights.pt"):
        Trainer(tiny_cfg(tmp_path / "missing", "train.init_from=/nonexistent/weights.pt"))
    torch.save(_model().state_dict(), tmp_path / "w.pt")
    cfg = tiny_cfg(tmp_path / "run", f"train.init_from={tmp_path / 'w.pt'}", "train.steps=2", "train.ckpt_every=1")
    Trainer(cfg).run()
    (tmp_path / "w.pt").unlink()
    resumed = Trainer(cfg, resume="auto")
    _, ckpt = checkpoint.latest(tmp_path / "run" / "checkpoints")
    assert resumed.step == 2 and _same(resumed.model, checkpoint.strip_prefixes(ckpt["model"]))
    assert resumed.built.init_source is None  # --resume continues the run, not init_from


def test_a_moved_finetune_samples_and_exports_without_its_init_file(tmp_path):
    """The shipped fine-tune recipe's artifacts travel: its run folder moved elsewhere and the weights it
    started from deleted, its checkpoint and its export still sample, export and score (the stored config
    is validated for the model it describes, not for the files the run once read)."""
    import shutil

    from rfengine import evaluate, export, sample
    from tests.helpers import ROOT
    torch.save(_model().state_dict(), tmp_path / "pretrained.pt")
    cfg = tiny_cfg(tmp_path / "run", f"train.init_from={tmp_path / 'pretrained.pt'}", "train.steps=2",
                   config_file=ROOT / "configs" / "tiny_finetune_reflexflow.yaml")
    assert cfg.objective.name == "reflexflow" and cfg.train.init_from
    Trainer(cfg).run()
    moved = shutil.move(tmp_path / "run", tmp_path / "elsewhere")
    (tmp_path / "pretrained.pt").unlink()
    ckpt = checkpoint.list_checkpoints(moved / "checkpoints")[-1][1]
    for source in (ckpt, moved / "ema.safetensors"):
        out = tmp_path / f"out_{source.stem}"
        assert sample.sample_main(["--ckpt", str(source), "--count", "2", "--steps", "1", "--out", str(out)]) == 0
        assert len(list(out.glob("samples_*.npz"))) == 1
        assert export.main(["--ckpt", str(source), "--out", str(out / "w.safetensors")]) == 0
        assert weights.load_model(out / "w.safetensors")[1].train.init_from == str(tmp_path / "pretrained.pt")
        assert evaluate.main(["bias", "--ckpt", str(source), "--count", "8", "--steps", "2", "--out", str(out)]) == 0
    assert export.main(["--run-dir", str(moved), "--out", str(tmp_path / "from_run_dir.safetensors")]) == 0
