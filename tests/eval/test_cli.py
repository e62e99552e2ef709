"""The measurement commands end to end on a tiny trained run: sampling (its file, labels and default
folders; many processes and resuming: test_sample_at_scale.py), FD against the embedded digits with the
shipped classifier, exposure-bias diagnostics, and the sampler options."""
import json
import shutil

import numpy as np
import pytest
import torch

from rfengine import evaluate, sample
from rfengine.trainer import Trainer
from tests.helpers import ROOT, tiny_cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_cfg(out, "train.steps=3")).run()
    return out


def test_sample_writes_npz_grid_and_metadata(run_dir, tmp_path):
    assert sample.sample_main(["--run-dir", str(run_dir), "--count", "7", "--batch", "3", "--steps", "2",
                               "--out", str(tmp_path)]) == 0
    stem = "samples_ema_step3_euler2_cfg1_n7_seed0"  # the checkpoint's step: a later one samples elsewhere
    with np.load(tmp_path / f"{stem}.npz") as f:
        assert sorted(f.files) == ["arr_0", "arr_1"]  # ADM's layout: images, then labels
        arr, labels = f["arr_0"], f["arr_1"]
    assert arr.dtype == np.uint8 and arr.shape == (7, 16, 16, 1)
    # uniform labels as DiT/SiT draw them (torch.randint), one stream indexed by sample
    want = torch.randint(0, 10, (7,), generator=torch.Generator().manual_seed(0))
    assert labels.dtype == np.int64 and labels.tolist() == want.tolist()
    assert (tmp_path / f"{stem}.png").is_file() and not (tmp_path / f"{stem}.parts").exists()
    meta = json.loads((tmp_path / f"{stem}.json").read_text())
    assert meta["steps"] == 2 and meta["weights"] == "ema" and meta["num"] == 7 and meta["step"] == 3
    assert meta["labels"] == "uniform" and meta["batch"] == 3
    before = (tmp_path / f"{stem}.npz").stat().st_mtime_ns  # the same command again: complete, nothing to do
    assert sample.sample_main(["--run-dir", str(run_dir), "--count", "7", "--batch", "3", "--steps", "2",
                               "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{stem}.npz").stat().st_mtime_ns == before
    assert sample.sample_main(["--run-dir", str(run_dir), "--count", "7", "--batch", "3", "--steps", "2",
                               "--out", str(tmp_path), "--labels", "balanced"]) == 0
    with np.load(tmp_path / "samples_ema_step3_euler2_cfg1_balanced_n7_seed0.npz") as f:
        assert f["arr_1"].tolist() == [0, 1, 2, 3, 4, 5, 6]  # class i % 10 for sample i


def test_default_output_folders(run_dir, tmp_path):
    """A run folder's samples go to <run>/eval; a weights file's beside it (never two folders up)."""
    args = ["--count", "2", "--steps", "1"]
    assert sample.sample_main(["--run-dir", str(run_dir), *args]) == 0
    assert (run_dir / "eval" / "samples_ema_step3_euler1_cfg1_n2_seed0.npz").is_file()
    weights = tmp_path / "deep" / "er" / "w.safetensors"
    weights.parent.mkdir(parents=True)
    shutil.copy(run_dir / "ema.safetensors", weights)
    assert sample.sample_main(["--ckpt", str(weights), *args]) == 0
    assert [p.name for p in weights.parent.glob("*.npz")] == ["samples_ema_step3_euler1_cfg1_n2_seed0.npz"]


@pytest.mark.parametrize("method, extra, stem", [
    ("sde", ["--cfg", "1.5", "--cfg-channels", "3", "--cfg-interval", "0", "0.7"],
     "samples_ema_step3_sde3_cfg1.5_ch3_int0-0.7_sigma1_lastmean0.04_n4_seed0"),
    ("dopri5", ["--rtol", "1e-2"], "samples_ema_step3_dopri53_cfg1_atol1e-06_rtol0.01_n4_seed0"),
])
def test_sample_cli_takes_the_sde_dopri5_and_guidance_options(run_dir, tmp_path, method, extra, stem):
    args = ["--run-dir", str(run_dir), "--count", "4", "--batch", "2", "--steps", "3", "--method", method, *extra]
    assert sample.sample_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert sample.sample_main([*args, "--out", str(tmp_path / "b")]) == 0
    with np.load(tmp_path / "a" / f"{stem}.npz") as a, np.load(tmp_path / "b" / f"{stem}.npz") as b:
        assert a["arr_0"].shape == (4, 16, 16, 1) and np.array_equal(a["arr_0"], b["arr_0"])  # seeded
    meta = json.loads((tmp_path / "a" / f"{stem}.json").read_text())
    assert meta["method"] == method
    if method == "sde":
        assert meta["cfg_channels"] == 3 and meta["cfg_interval"] == [0.0, 0.7] and meta["diffusion"] == "sigma"
        assert meta["last_step"] == "mean" and meta["last_step_size"] == 0.04
    else:
        assert meta["rtol"] == 0.01 and len(meta["nfe_per_batch"]) == 2 and min(meta["nfe_per_batch"]) >= 6


def test_fd_and_bias_commands(run_dir, tmp_path):
    assert sample.sample_main(["--run-dir", str(run_dir), "--count", "40", "--steps", "2", "--out", str(tmp_path)]) == 0
    npz = tmp_path / "samples_ema_step3_euler2_cfg1_n40_seed0.npz"
    res = evaluate.fd_command(evaluate.parse_args(["fd", "--samples", str(npz), "--ref", "digits"]))
    assert res["fd"] > 0 and res["n_samples"] == 40 and res["precision_recall"]["n_ref"] == 1797
    assert res["features"]["accuracy"] > 0.9  # the shipped digit classifier is a usable feature space
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


def test_a_latent_model_is_decoded_with_its_vae_and_refused_without_one(tmp_path, capsys):
    """Released latent-model weights (SiT's format) with the ImageNet config: the latents are decoded with
    --vae (a small random diffusers AutoencoderKL here) into uint8 images, or without it with the config's
    data.vae (the same images); a config without data.vae, or one whose data.vae does not load, is refused
    in one line that says to pass --vae."""
    diffusers = pytest.importorskip("diffusers")
    import torch
    from rfengine.models import build_model
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    m = build_model("DiT-T/4", in_channels=4, input_size=8, num_classes=1000, learn_sigma=True)
    torch.save(m.state_dict(), tmp_path / "sit.pt")
    args = ["--ckpt", str(tmp_path / "sit.pt"), "--config", str(ROOT / "configs" / "imagenet256_fm.yaml"),
            "--set", "model.arch=DiT-T/4", "--set", "model.learn_sigma=true", "--set", "data.image_size=64",
            "--count", "3", "--steps", "2", "--cfg", "1.5", "--cfg-channels", "3"]
    assert sample.sample_main([*args, "--set", "data.vae=", "--out", str(tmp_path / "no")]) == 1
    assert "names no data.vae; pass --vae" in capsys.readouterr().err
    assert sample.sample_main([*args, "--set", "data.vae=", "--vae", "", "--out", str(tmp_path / "no")]) == 1
    assert "names no data.vae; pass --vae" in capsys.readouterr().err  # an empty --vae is no VAE
    assert sample.sample_main([*args, "--set", f"data.vae={tmp_path / 'missing'}", "--out", str(tmp_path / "no")]) == 1
    err = capsys.readouterr().err
    assert "the config's data.vae does not load" in err and "missing" in err and "pass --vae" in err
    assert sample.sample_main([*args, "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s" / "samples_ema_euler2_cfg1.5_ch3_n3_seed0.npz") as f:
        assert f["arr_0"].shape == (3, 16, 16, 3) and f["arr_0"].dtype == np.uint8
    assert sample.sample_main([*args, "--set", f"data.vae={tmp_path / 'vae'}", "--out", str(tmp_path / "cfg")]) == 0
    with np.load(tmp_path / "s" / "samples_ema_euler2_cfg1.5_ch3_n3_seed0.npz") as a, \
            np.load(tmp_path / "cfg" / "samples_ema_euler2_cfg1.5_ch3_n3_seed0.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
    meta = json.loads((tmp_path / "cfg" / "samples_ema_euler2_cfg1.5_ch3_n3_seed0.json").read_text())
    assert meta["vae"] == str(tmp_path / "vae")


@pytest.mark.parametrize("argv, message", [
    (["--method", "sde", "--shift", "2"], "--method sde would ignore --shift 2"),
    (["--method", "dopri5", "--shift", "3"], "--method dopri5 would ignore --shift 3"),
    (["--method", "ab2", "--shift", "0"], "--shift must be finite and > 0"),
    (["--method", "euler", "--shift", "nan"], "--shift must be finite and > 0"),
    (["--method", "heun", "--shift", "inf"], "--shift must be finite and > 0"),
])
def test_a_grid_shift_the_sampler_would_ignore_is_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        sample.parse_args(["--ckpt", "x", *argv])
    assert message in capsys.readouterr().err
    assert sample.parse_args(["--ckpt", "x", "--method", "ab2", "--steps", "4", "--shift", "2"]).shift == 2.0
