"""The latent extraction tool on a small randomly initialised diffusers AutoencoderKL and generated
images: the shards hold the VAE's encodings of the centre-cropped images and their flips, the
reader accepts them with the matching config, an interrupted extraction continues, and a run trains
on them."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the optional [latents] extra (diffusers) is not installed")

from rfengine.data import LatentShardDataset  # noqa: E402
from rfengine.data.folder import ImageFolderDataset  # noqa: E402
from rfengine.extract_latents import extract, main  # noqa: E402
from rfengine.trainer import Trainer  # noqa: E402
from tests.helpers import read_metrics, tiny_cfg  # noqa: E402


def test_shards_hold_the_vae_encodings_and_the_reader_accepts_them(tmp_path, vae_dir, images):
    out = extract(str(images), str(vae_dir), tmp_path / "lat", resolution=32, batch=4, shard_size=4, mode="mean",
                  dtype="float32", workers=0, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["channels"] == 4 and meta["latent_size"] == 4 and meta["num_classes"] == 2
    assert meta["flip"] == "both" and meta["scale_factor"] == pytest.approx(0.18215) and len(meta["shards"]) == 3
    ds = LatentShardDataset(out, vae=str(vae_dir), scale_factor=0.18215, resolution=32, flip=True)
    assert len(ds) == 11 and ds.shape == (4, 4, 4)
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    pixels = ImageFolderDataset(images, 32)
    for i in (0, 6, 10):
        x, label = pixels[i]
        with torch.no_grad():
            want = vae.encode(x[None]).latent_dist.mean[0] * 0.18215
            want_flip = vae.encode(x[None].flip(-1)).latent_dist.mean[0] * 0.18215
        z, y = ds[i]
        torch.testing.assert_close(z, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ds[i + len(ds)][0], want_flip, rtol=1e-4, atol=1e-5)  # the stored flipped copy
        assert int(y) == int(label)
    with pytest.raises(ValueError, match="encoded with"):
        LatentShardDataset(out, vae="another/vae")


def test_sampled_latents_are_seeded_per_image_and_extraction_resumes(tmp_path, vae_dir, images, caplog):
    a = extract(str(images), str(vae_dir), tmp_path / "a", resolution=32, batch=3, shard_size=4, workers=0,
                progress=False)
    b = extract(str(images), str(vae_dir), tmp_path / "b", resolution=32, batch=5, shard_size=4, workers=0,
                progress=False)
    for i in range(3):  # the same draws whatever the batching (another draw would differ by about 1; the
        # encoder's convolutions may round differently at another batch size, a float16 ulp or two)
        np.testing.assert_allclose(np.load(a / f"latents_{i:05d}.npy").astype(np.float32),
                                   np.load(b / f"latents_{i:05d}.npy").astype(np.float32), rtol=0, atol=5e-3)
    assert np.load(a / "latents_00000.npy").dtype == np.float16
    # An extraction killed after shard 1: shard 2 and meta.json are missing; the rerun keeps shards 0-1.
    (b / "latents_00002.npy").unlink()
    (b / "meta.json").unlink()
    before = (b / "latents_00000.npy").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        extract(str(images), str(vae_dir), b, resolution=32, batch=5, shard_size=4, workers=0, progress=False)
    assert "2 of this process's 3 shards are already complete" in caplog.text
    assert (b / "latents_00000.npy").stat().st_mtime_ns == before
    np.testing.assert_array_equal(np.load(a / "latents_00002.npy"), np.load(b / "latents_00002.npy"))
    assert (b / "meta.json").is_file()


def test_a_run_trains_on_extracted_latents(tmp_path, vae_dir, images):
    out = extract(str(images), str(vae_dir), tmp_path / "lat", resolution=32, batch=4, workers=0, progress=False)
    cfg = tiny_cfg(tmp_path / "run", "data.name=latents", f"data.path={out}", f"data.vae={vae_dir}",
                   "data.image_size=32", "data.flip=true", "model.arch=DiT-T/2", "train.batch_size=4", "train.steps=3")
    Trainer(cfg).run()
    assert len(read_metrics(tmp_path / "run")) == 3


def test_cli_names_a_bad_vae(tmp_path, images, capsys):
    assert main(["--images", str(images), "--vae", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                 "--resolution", "16", "--workers", "0"]) == 1
    assert "cannot load an AutoencoderKL" in capsys.readouterr().err
