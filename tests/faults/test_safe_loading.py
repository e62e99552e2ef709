"""Every file rfengine reads is read without running code: a pickle whose `__reduce__` runs a shell
command is refused in one line at every entry point (train.init_from, --resume PATH, --resume auto,
a sharded folder's meta.pt, rfengine.sample --ckpt, rfengine.export), and the command never runs.
Released SiT training checkpoints (with an argparse.Namespace under `args`) and rfengine checkpoints
written before the RNG states were tensors still load. A file that is no checkpoint at all (random bytes,
a cut archive, text) is one line in rfengine's words at every entry point that reads weights."""
import argparse
import os

import numpy as np
import pytest
import torch

from rfengine import checkpoint, weights
from rfengine.models import build_model
from rfengine.trainer import Trainer
from tests.helpers import set_args, tiny_cfg, train_cli


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil(path, marker, **extra):
    torch.save({"model": {}, "ema": {}, "step": 3, "x": Payload(marker), **extra}, path)
    return path


def one_line_refusal(r, marker):
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("rfengine: error:")]
    assert len(lines) == 1 and "refused: reading it would call" in lines[0] and "system" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not marker.exists(), "the payload ran"


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The test's payload is live: a plain unpickle runs it (so its absence below means something)."""
    marker = tmp_path / "ran"
    torch.load(evil(tmp_path / "e.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("entry", ["init_from", "resume_path", "resume_auto", "sharded_meta"])
def test_training_refuses_a_pickle_that_runs_code(tmp_path, entry):
    marker, run = tmp_path / "ran", tmp_path / "run"
    args = ["--config", "configs/tiny_fm.yaml", *set_args("train.progress=false", f"train.out_dir={run}",
                                                          "train.steps=2", "model.arch=DiT-T/4")]
    if entry == "init_from":
        r = train_cli(*args, "--set", f"train.init_from={evil(tmp_path / 'evil.pt', marker)}")
    elif entry == "resume_path":
        r = train_cli(*args, "--resume", str(evil(tmp_path / "evil.pt", marker)))
    elif entry == "resume_auto":
        (run / "checkpoints").mkdir(parents=True)
        evil(run / "checkpoints" / "step_00000004.pt", marker)
        r = train_cli(*args, "--resume", "auto")
    else:
        folder = run / "checkpoints" / "step_00000004"
        folder.mkdir(parents=True)
        (folder / ".metadata").write_bytes(b"")
        evil(folder / checkpoint.META, marker)
        r = train_cli(*args, "--resume", "auto")
    one_line_refusal(r, marker)


@pytest.mark.parametrize("module", ["rfengine.sample", "rfengine.export"])
def test_sampling_and_export_refuse_a_pickle_that_runs_code(tmp_path, module):
    import subprocess
    import sys
    from tests.helpers import ROOT
    marker = tmp_path / "ran"
    r = subprocess.run([sys.executable, "-m", module, "--ckpt", str(evil(tmp_path / "evil.pt", marker)),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_refusal(r, marker)


def test_a_sit_training_checkpoint_with_args_loads(tmp_path):
    """SiT's train.py saves {"model", "ema", "opt", "args": argparse.Namespace}."""
    torch.manual_seed(0)
    sit = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    path = tmp_path / "0400000.pt"
    torch.save({"model": sit.state_dict(), "ema": sit.state_dict(), "opt": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="SiT-B/2", image_size=256, global_seed=0)}, path)
    torch.manual_seed(1)
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    ema = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    what = weights.init_weights(model, ema, path, "ema")
    assert "ema weights" in what
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), sit.state_dict().values()))


def test_own_checkpoints_hold_only_tensors_and_plain_types(tmp_path):
    """What rfengine writes loads with weights_only=True and nothing allowed beyond it."""
    Trainer(tiny_cfg(tmp_path, "train.steps=2")).run()
    path = checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1][1]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(ckpt["rng"][0]["numpy"]["keys"], torch.Tensor) and ckpt["step"] == 2


def test_a_checkpoint_with_the_old_numpy_rng_state_still_resumes(tmp_path):
    """Checkpoints written before the RNG states were tensors hold numpy's state tuple (a uint32
    array): the allow-list reads it, and the restored numpy stream is the one that was saved."""
    Trainer(tiny_cfg(tmp_path, "train.steps=2", "train.ckpt_every=1")).run()
    path = checkpoint.list_checkpoints(tmp_path / "checkpoints")[-1][1]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    np.random.seed(7)
    state = np.random.get_state()
    ckpt["rng"] = [{**ckpt["rng"][0], "numpy": state}]
    torch.save(ckpt, path)
    want = np.random.rand(3)
    loaded = checkpoint.load(path)
    np.random.seed(0)
    checkpoint.restore_rng(loaded["rng"][0])
    assert np.array_equal(np.random.rand(3), want)
    tr = Trainer(tiny_cfg(tmp_path, "train.steps=3"), resume="auto")
    assert tr.step == 2


def _bad_file(tmp_path, kind):
    """A file that is no checkpoint: random bytes, a torch.save archive cut in half, a text file, or
    random bytes named like a safetensors file."""
    if kind == "truncated_zip":
        torch.save({"model": {"w": torch.zeros(1000)}, "step": 1}, tmp_path / "whole.pt")
        whole = (tmp_path / "whole.pt").read_bytes()
        (tmp_path / "bad.pt").write_bytes(whole[: len(whole) // 2])
        return tmp_path / "bad.pt"
    if kind == "text":
        (tmp_path / "bad.pt").write_text("step: 3\nmodel: DiT-T/4\n")
        return tmp_path / "bad.pt"
    path = tmp_path / ("bad.safetensors" if kind == "random_safetensors" else "bad.pt")
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


@pytest.mark.parametrize("entry", ["init_from", "resume_path", "sample", "export", "evaluate"])
@pytest.mark.parametrize("kind", ["random", "truncated_zip", "text", "random_safetensors"])
def test_a_file_that_is_no_checkpoint_is_one_line_in_our_words(tmp_path, capsys, entry, kind):
    """At every entry point that reads weights: one error line naming the file and saying it is not a
    checkpoint or weights file rfengine can read; never torch's advice to load it with weights_only=False."""
    from rfengine import evaluate, export, sample, train
    from tests.helpers import ROOT
    bad = _bad_file(tmp_path, kind)
    run = ["--config", str(ROOT / "configs" / "tiny_fm.yaml"),
           *set_args("train.progress=false", f"train.out_dir={tmp_path / 'run'}", "train.steps=2", "model.arch=DiT-T/4")]
    argv = {"init_from": (train.main, [*run, "--set", f"train.init_from={bad}"]),
            "resume_path": (train.main, [*run, "--resume", str(bad)]),
            "sample": (sample.sample_main, ["--ckpt", str(bad), "--count", "2", "--out", str(tmp_path / "out")]),
            "export": (export.main, ["--ckpt", str(bad), "--out", str(tmp_path / "w.safetensors")]),
            "evaluate": (evaluate.main, ["bias", "--ckpt", str(bad), "--out", str(tmp_path / "out")])}[entry]
    assert argv[0](argv[1]) == 1
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1 and lines[0].startswith("rfengine"), err[-2000:]
    assert f"{bad} is not a checkpoint or weights file that rfengine can read" in lines[0], lines[0]
    assert "weights_only" not in err and "Traceback" not in err
