"""Latents know the VAE that made them by content: meta.json records its config and a SHA-256 of its
weights, so a copy of that VAE under another name (the hub name of a local copy, another folder) trains
without editing the config, while a different VAE is refused in one line. A latent run's sample grids
are decoded through that VAE when it loads, or say once that they show raw latents."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers", reason="the optional [latents] extra (diffusers) is not installed")

from rfengine.data import LatentShardDataset  # noqa: E402
from rfengine.data.vae import load_vae, vae_identity  # noqa: E402
from rfengine.extract_latents import extract  # noqa: E402
from rfengine.trainer import Trainer  # noqa: E402
from tests.helpers import tiny_cfg, tiny_vae  # noqa: E402

HUB = "stabilityai/sd-vae-ft-ema"  # not on this machine (no network, not in the cache)


@pytest.fixture(scope="module")
def latents(tmp_path_factory, vae_dir, images):
    """Shards extracted with `--vae /local/sd-vae-ft-ema`."""
    return extract(str(images), str(vae_dir), tmp_path_factory.mktemp("lat"), resolution=32, batch=6, workers=0,
                   progress=False)


def _dataset(latents, vae):
    return LatentShardDataset(latents, vae=vae, scale_factor=0.18215, resolution=32, flip=True)


def test_meta_records_the_vae_by_content(latents, vae_dir):
    meta = json.loads((latents / "meta.json").read_text())
    want = vae_identity(load_vae(str(vae_dir), None, "cpu"))
    assert meta["vae"] == str(vae_dir) and meta["vae_sha256"] == want["sha256"] and len(want["sha256"]) == 64
    assert meta["vae_config"]["block_out_channels"] == [8, 8, 16, 16] and meta["vae_config"]["latent_channels"] == 4


def test_a_copy_of_the_same_vae_is_accepted(latents, vae_dir, tmp_path, caplog):
    copy = shutil.copytree(vae_dir, tmp_path / "elsewhere" / "my-vae")  # another name, the same weights
    with caplog.at_level("INFO"):
        _dataset(latents, str(copy))
    assert "the same weights" in caplog.text
    with caplog.at_level("INFO"):
        _dataset(latents, HUB)  # the hub name of the local copy, which is not on this machine
    assert "taken for a copy" in caplog.text


@pytest.mark.parametrize("which", ["other weights", "other hub model"])
def test_a_different_vae_is_refused_in_one_line(latents, tmp_path, which):
    vae = str(tiny_vae(tmp_path / "sd-vae-ft-ema", seed=1)) if which == "other weights" else "stabilityai/sd-vae-ft-mse"
    with pytest.raises(ValueError) as e:
        _dataset(latents, vae)
    msg = str(e.value)
    assert "\n" not in msg and "disagree with the config" in msg
    assert ("is not the VAE the shards were encoded with" if which == "other weights" else "cannot be loaded here") in msg


def _train(tmp_path, latents, vae, name):
    cfg = tiny_cfg(tmp_path / name, "data.name=latents", f"data.path={latents}", f"data.vae={vae}",
                   "data.image_size=32", "data.flip=true", "model.arch=DiT-T/2", "train.batch_size=4", "train.steps=2",
                   "train.sample_every=1", "sample.num_images=2")
    Trainer(cfg).run()
    return Image.open(tmp_path / name / "samples" / "step_00000002.png"), (tmp_path / name / "log.txt").read_text()


def test_grids_of_a_latent_run_are_decoded_through_its_vae(latents, tmp_path):
    grid, log = _train(tmp_path, latents, HUB, "run")  # the config's hub name: the grids use the local copy
    assert "latents decoded through the VAE" in log and "raw latents" not in log
    # two 32x32 RGB images (upscaled 2x) in a row, not two 4x4 latents (upscaled 16x)
    assert grid.mode == "RGB" and grid.size == ((2 * 34 + 2) * 2, 36 * 2)
    assert np.asarray(grid).std() > 0


def test_grids_say_once_when_no_vae_loads(images, tmp_path):
    gone = tiny_vae(tmp_path / "gone" / "sd-vae-ft-ema")
    lat = extract(str(images), str(gone), tmp_path / "lat", resolution=32, batch=6, workers=0, progress=False)
    shutil.rmtree(gone)
    grid, log = _train(tmp_path, lat, HUB, "run")
    assert log.count("show raw latents") == 1  # two grids (steps 1 and 2), said once
    assert grid.size == ((2 * 6 + 2) * 16, 8 * 16)
