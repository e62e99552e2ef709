import json

import numpy as np
import pytest
import torch
from PIL import Image

from rfengine import config
from rfengine.data import ShardedBatchSampler, build_dataset, batches


def test_digits_embedded():
    ds = build_dataset(config.from_dict({}).data)
    assert len(ds) == 1797 and ds.shape == (1, 16, 16) and ds.num_classes == 10
    x, y = ds[0]
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0 and 0 <= y < 10


def test_sampler_is_a_pure_function_of_the_batch_index():
    a = ShardedBatchSampler(100, 16, seed=3, flip=True)
    it = iter(a)
    first = [next(it) for _ in range(15)]  # crosses epoch boundaries (6 batches per epoch)
    b = iter(ShardedBatchSampler(100, 16, seed=3, flip=True, start_batch=9))
    assert [next(b) for _ in range(6)] == first[9:]
    assert any(i >= 100 for batch in first for i in batch) and all(0 <= i < 200 for batch in first for i in batch)
    epoch0 = sorted(i % 100 for batch in first[:6] for i in batch)
    assert len(set(epoch0)) == 96  # no repeats within an epoch


def test_sampler_shards_across_ranks():
    r0 = next(iter(ShardedBatchSampler(50, 8, rank=0, world=2, seed=1)))
    r1 = next(iter(ShardedBatchSampler(50, 8, rank=1, world=2, seed=1)))
    whole = next(iter(ShardedBatchSampler(50, 8, seed=1)))
    assert r0 + r1 == whole
    with pytest.raises(ValueError, match="divisible"):
        ShardedBatchSampler(50, 9, world=2)
    with pytest.raises(ValueError, match="larger than the data set"):
        ShardedBatchSampler(5, 8)


def make_folder(root, classes=("cat", "dog"), per=3, size=(20, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder(tmp_path):
    root = make_folder(tmp_path / "imgs")
    cfg = config.from_dict({"data": {"name": "folder", "path": str(root), "image_size": 8, "flip": True}}).data
    ds = build_dataset(cfg)
    assert len(ds) == 6 and ds.num_classes == 2 and ds.shape == (3, 8, 8)
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and y == 1 and -1 <= x.min() and x.max() <= 1
    xf, _ = ds[4 + 6]
    assert torch.equal(xf, torch.flip(x, dims=[-1]))
    xb, yb = next(batches(ds, 4, rank=0, world=1, seed=0, flip=True))
    assert xb.shape == (4, 3, 8, 8) and yb.shape == (4,)


def make_shards(root, n=(5, 3), flip="both", vae="sd-vae-ft-ema", scale=0.18215):
    root.mkdir(parents=True)
    shards = []
    for i, k in enumerate(n):
        lat = np.random.default_rng(i).standard_normal((k, 2 if flip == "both" else 1, 4, 4, 4)).astype(np.float16)
        np.save(root / f"latents_{i:05d}.npy", lat)
        np.save(root / f"labels_{i:05d}.npy", np.arange(k, dtype=np.int64) % 7)
        shards.append({"latents": f"latents_{i:05d}.npy", "labels": f"labels_{i:05d}.npy"})
    meta = dict(vae=vae, scale_factor=scale, resolution=32, flip=flip, channels=4, latent_size=4, num_classes=7,
                shards=shards)
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def latent_cfg(root, **kw):
    data = {"name": "latents", "path": str(root), "image_size": 32, "vae": "sd-vae-ft-ema", **kw}
    return config.from_dict({"data": data}).data


def test_latent_shards_read_and_flip(tmp_path):
    root = make_shards(tmp_path / "lat")
    ds = build_dataset(latent_cfg(root, flip=True))
    assert len(ds) == 8 and ds.shape == (4, 4, 4) and ds.num_classes == 7
    raw = np.load(root / "latents_00001.npy")
    x, y = ds[6]  # second shard, item 1
    np.testing.assert_allclose(x.numpy(), raw[1, 0].astype(np.float32) * 0.18215, rtol=1e-6)
    xf, _ = ds[6 + 8]
    np.testing.assert_allclose(xf.numpy(), raw[1, 1].astype(np.float32) * 0.18215, rtol=1e-6)
    assert y == 1
