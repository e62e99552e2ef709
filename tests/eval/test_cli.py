"""The measurement commands end to end on a tiny trained run: sampling (1 and 2 processes give the
same images), FD against the embedded digits with the cached classifier, exposure-bias diagnostics,
and the study pipeline in its quick form."""
import json

import numpy as np
import pytest

from rfengine import evaluate, sample
from rfengine.trainer import Trainer
from tests.helpers import ROOT, tiny_cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_cfg(out, "train.steps=3")).run()
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RFENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_sample_writes_npz_grid_and_metadata(run_dir, tmp_path):
    assert sample.sample_main(["--run-dir", str(run_dir), "--count", "7", "--batch", "3", "--steps", "2",
                               "--out", str(tmp_path)]) == 0
    stem = "samples_ema_euler2_cfg1_n7_seed0"
    with np.load(tmp_path / f"{stem}.npz") as f:
        arr, labels = f["arr_0"], f["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (7, 16, 16, 1)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6]  # class i % 10 for sample i
    assert (tmp_path / f"{stem}.png").is_file()
    meta = json.loads((tmp_path / f"{stem}.json").read_text())
    assert meta["steps"] == 2 and meta["weights"] == "ema" and meta["num"] == 7


def test_sampling_under_torchrun_gives_the_same_images(run_dir, tmp_path):
    import subprocess
    import sys
    args = ["--run-dir", str(run_dir), "--count", "6", "--batch", "2", "--steps", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert sample.sample_main([*args, "--out", str(one)]) == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "rfengine.sample", *args, "--out", str(two)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    name = "samples_ema_euler2_cfg1_n6_seed0.npz"
    a, b = np.load(one / name)["arr_0"].astype(int), np.load(two / name)["arr_0"].astype(int)
    assert np.abs(a - b).max() <= 1  # same noise per index; batch composition may move a rounding


def test_fd_and_bias_commands(run_dir, tmp_path):
    assert sample.sample_main(["--run-dir", str(run_dir), "--count", "40", "--steps", "2", "--out", str(tmp_path)]) == 0
    npz = tmp_path / "samples_ema_euler2_cfg1_n40_seed0.npz"
    res = evaluate.fd_command(evaluate.parse_args(["fd", "--samples", str(npz), "--ref", "digits"]))
    assert res["fd"] > 0 and res["n_fake"] == 40 and res["n_real"] == 1797
    assert res["feature_accuracy"] > 0.9  # the cached digit classifier is a usable feature space
    assert res["sampling"]["steps"] == 2 and 0 <= res["precision"] <= 1
    saved = json.loads(npz.with_name(npz.stem + "_fd_digits.json").read_text())
    assert saved["fd"] == res["fd"]

    assert evaluate.main(["bias", "--run-dir", str(run_dir), "--steps", "4", "--count", "16", "--out", str(tmp_path)]) == 0
    bias = json.loads((tmp_path / "exposure_bias_ema_4.json").read_text())
    assert len(bias["paired_error"]) == 4 and (tmp_path / "exposure_bias_ema_4.png").is_file()


def test_evaluate_names_bad_inputs(tmp_path, capsys):
    assert evaluate.main(["fd", "--samples", str(tmp_path / "none.npz")]) == 1
    assert "images not found" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 4, 4), np.float32))
    assert evaluate.main(["fd", "--samples", str(tmp_path / "bad.npz")]) == 1
    assert "uint8 (N, H, W, C)" in capsys.readouterr().err
    assert evaluate.main(["fd", "--samples", str(tmp_path / "bad.npz"), "--features", "inception"]) == 1


def test_study_v1_quick_pipeline(tmp_path):
    from rfengine.study import v1 as study
    assert study.main(["--quick", "--methods", "fm", "reflexflow", "--out", str(tmp_path / "res"),
                       "--docs", str(tmp_path / "docs" / "results.md")]) == 0
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    methods = {r["method"] for r in summary["rows"]}
    assert methods == {"fm", "reflexflow", "fm_equal_wallclock"}
    for key in ("fd", "precision", "recall", "sec_per_step", "bias_paired_mean", "sample_steps", "seed"):
        assert key in summary["rows"][0]
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| ReflexFlow |" in text and "fd_vs_steps.png" in text
    for png in ("fd_vs_steps.png", "exposure_bias.png", "bias_spectrum.png", "grids/reflexflow_s0.png"):
        assert (tmp_path / "res" / png).is_file(), png
    # a second call reuses every finished run's scores
    assert study.main(["--quick", "--methods", "fm", "reflexflow", "--out", str(tmp_path / "res"),
                       "--docs", str(tmp_path / "docs" / "results.md")]) == 0
