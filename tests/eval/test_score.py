"""Scoring a sample file against an ADM-format reference: the reference's mu/sigma are used where it has them (a
shifted mu moves the FID by exactly the shift's effect; other arr_0 images beside the same mu/sigma leave it alone),
its arr_0 otherwise; the JSON names the statistics and counts; images are streamed (memory does not grow with N);
precision/recall is never skipped; the .npz reader takes stored and compressed files alike. The command line is run
end to end once, on a stand-in for the Inception weights."""
import json
import tracemalloc
import zipfile

import numpy as np
import numpy.lib.format as npformat
import pytest
import torch

from rfengine import evaluate
from rfengine.eval.fd import feature_stats, frechet_distance
from rfengine.eval.npz import NpzImages, read_stats
from rfengine.eval.score import score


class TinyFeatures:
    """A feature network with the Inception extractor's interface (pool, spatial, logits) that costs nothing."""

    dim, fd_name = 6, "fid"
    info = {"network": "tiny test network"}

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * 4 * 4, self.dim, generator=g)
        self.w = torch.randn(self.dim, 5, generator=g)

    def extract(self, x):
        small = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)      # (N, 48)
        return {"pool": (small @ self.proj).numpy(), "spatial": small[:, :10].numpy()}

    def logits(self, pool):
        return pool.float() @ self.w


def images(n, seed, size=16, offset=0):
    return np.random.default_rng(seed).integers(offset, 256 - 64 + offset, (n, size, size, 3), dtype=np.uint8)


def tiny_stats(arr):
    """What the reference file's statistics would be, in TinyFeatures' space."""
    out = TinyFeatures().extract(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1)
    return {**dict(zip(("mu", "sigma"), feature_stats(out["pool"]))),
            **dict(zip(("mu_s", "sigma_s"), feature_stats(out["spatial"])))}


@pytest.fixture
def files(tmp_path):
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=images(40, 1, offset=30), labels=np.zeros(40, np.int64))
    train = images(300, 2)                          # the "training set" behind the reference statistics
    return samples, tiny_stats(train), images(25, 3)


def run(samples, ref, **kw):
    return score(str(samples), str(ref), TinyFeatures, batch=7, **kw)


def test_a_reference_files_mu_sigma_are_used_and_named(files, tmp_path):
    samples, stats, ref_images = files
    np.savez(tmp_path / "adm.npz", arr_0=ref_images, **stats)
    res = run(samples, tmp_path / "adm.npz")
    assert res["statistics"]["fid"]["ref"] == {"source": "statistics stored in the reference file", "n": None}
    assert res["statistics"]["fid"]["samples"]["n"] == 40 and res["n_samples"] == 40
    assert res["statistics"]["sfid"]["ref"]["source"] == "statistics stored in the reference file"
    assert res["precision_recall"] == {"k": 3, "n_ref": 25, "n_samples": 40}
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1 and res["inception_score"] > 1
    assert res["inception_score_splits"] == 1 and res["features"] == TinyFeatures.info

    # a file that records how many images its statistics came from (as `evaluate ref` writes) is believed
    np.savez(tmp_path / "counted.npz", arr_0=ref_images, stats_count=np.array(300), **stats)
    assert run(samples, tmp_path / "counted.npz")["statistics"]["fid"]["ref"]["n"] == 300

    # other arr_0 images beside the same mu/sigma: the same FID and sFID, other precision/recall
    np.savez(tmp_path / "other_images.npz", arr_0=images(25, 9, offset=60), **stats)
    other = run(samples, tmp_path / "other_images.npz")
    assert other["fid"] == res["fid"] and other["sfid"] == res["sfid"]
    assert (other["precision"], other["recall"]) != (res["precision"], res["recall"])

    # a shifted mu moves the FID by exactly what the shift does to ||mu_samples - mu_ref||^2
    shift = np.full(6, 0.5)
    np.savez(tmp_path / "shifted.npz", arr_0=ref_images, **{**stats, "mu": stats["mu"] + shift})
    shifted = run(samples, tmp_path / "shifted.npz")
    mu = tiny_stats(np.load(samples)["arr_0"])["mu"]
    moved = ((mu - stats["mu"] - shift) ** 2).sum() - ((mu - stats["mu"]) ** 2).sum()
    assert shifted["fid"] - res["fid"] == pytest.approx(moved, rel=1e-6) and abs(moved) > 0.1
    assert shifted["sfid"] == res["sfid"]


def test_without_statistics_the_reference_images_make_them(files, tmp_path):
    samples, _, ref_images = files
    np.savez_compressed(tmp_path / "images_only.npz", arr_0=ref_images)   # compressed: streamed all the same
    res = run(samples, tmp_path / "images_only.npz")
    assert res["statistics"]["fid"]["ref"] == {"source": "computed from the reference file's arr_0", "n": 25}
    own, theirs = tiny_stats(np.load(samples)["arr_0"]), tiny_stats(ref_images)
    assert res["fid"] == pytest.approx(frechet_distance(own["mu"], own["sigma"], theirs["mu"], theirs["sigma"]),
                                       rel=1e-6)  # features of 7-image batches, not of all at once: float32 rounding


def test_a_statistics_only_reference_scores_fid_and_says_why_there_is_no_precision_recall(files, tmp_path):
    samples, stats, _ = files
    np.savez(tmp_path / "stats.npz", mu=stats["mu"], sigma=stats["sigma"])     # pytorch-fid's stats format
    res = run(samples, tmp_path / "stats.npz")
    assert res["fid"] > 0 and res["sfid"] is None and res["precision"] is None and res["recall"] is None
    assert any("no arr_0 images" in n for n in res["notes"]) and any(n.startswith("sfid:") for n in res["notes"])


def test_bad_reference_files_are_named_in_one_line(files, tmp_path, capsys):
    samples, stats, ref_images = files
    np.savez(tmp_path / "half.npz", arr_0=ref_images, mu=stats["mu"])
    np.savez(tmp_path / "wrong_dims.npz", arr_0=ref_images, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="has mu without sigma"):
        read_stats(tmp_path / "half.npz")
    assert read_stats(tmp_path / "wrong_dims.npz")[1] is None             # ADM's files do not say how many images
    with pytest.raises(ValueError, match="its fid statistics have 2048 dims, the tiny test network's features 6"):
        run(samples, tmp_path / "wrong_dims.npz")
    np.savez(tmp_path / "three.npz", arr_0=ref_images[:3])
    with pytest.raises(ValueError, match="three.npz: 3 images in arr_0; precision/recall .k = 3. needs at least 4"):
        run(samples, tmp_path / "three.npz")
    np.save(tmp_path / "plain.npy", ref_images)
    assert evaluate.main(["fd", str(samples), "--ref", str(tmp_path / "plain.npy"), "--features", "inception"]) == 1
    err = capsys.readouterr().err
    assert "not an .npz" in err and err.count("\n") == 1


def test_precision_recall_is_computed_for_every_pair_however_many(tmp_path):
    """The old code skipped it above 25M sample x reference pairs; now the distances go in blocks."""
    np.savez(tmp_path / "s.npz", arr_0=images(5003, 4, size=4))
    np.savez(tmp_path / "r.npz", arr_0=images(5002, 5, size=4))
    res = score(str(tmp_path / "s.npz"), str(tmp_path / "r.npz"), TinyFeatures, batch=2000, pr_batch=999)
    assert res["precision_recall"]["n_samples"] * res["precision_recall"]["n_ref"] > 25_000_000
    assert 0 < res["precision"] <= 1 and 0 < res["recall"] <= 1 and res["inception_score_splits"] == 2


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Traced allocations (numpy, bytes) while scoring 40 and 400 images of 64x64: holding the images would add
    360 x 12 KB (uint8) or x 48 KB (float32); streaming adds only their 6 features each."""
    def peak(n):
        np.savez(tmp_path / f"s{n}.npz", arr_0=images(n, n, size=64))
        tracemalloc.start()
        run(tmp_path / f"s{n}.npz", tmp_path / f"s{n}.npz")
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top
    small, large = peak(40), peak(400)
    assert large - small < 0.25 * 360 * 64 * 64 * 3, (small, large)


def test_npz_reader_streams_stored_and_compressed_members_and_refuses_bad_ones(tmp_path):
    arr = images(11, 6, size=5)
    np.savez(tmp_path / "stored.npz", arr_0=arr)
    np.savez_compressed(tmp_path / "deflated.npz", arr_0=arr)
    for name in ("stored.npz", "deflated.npz"):
        with NpzImages(tmp_path / name) as f:
            parts = list(f.batches(4))
        assert [len(p) for p in parts] == [4, 4, 3] and np.array_equal(np.concatenate(parts), arr)
    raw = (tmp_path / "stored.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])                  # a copy that stopped half way
    with pytest.raises(ValueError, match="cut.npz: not an .npz file"):
        NpzImages(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:                   # a member shorter than its header
        with z.open("arr_0.npy", "w") as m:
            npformat.write_array_header_1_0(m, npformat.header_data_from_array_1_0(arr))
            m.write(arr[:5].tobytes())
    with NpzImages(tmp_path / "short.npz") as f, pytest.raises(ValueError, match="ends after 5 of 11 images"):
        list(f.batches(4))
    big = images(3000, 7, size=5)
    np.savez(tmp_path / "flipped.npz", arr_0=big)
    raw = bytearray((tmp_path / "flipped.npz").read_bytes())
    raw[raw.find(big[1500].tobytes())] ^= 0xFF                                 # one damaged byte: the CRC says so
    (tmp_path / "flipped.npz").write_bytes(raw)
    with NpzImages(tmp_path / "flipped.npz") as f, pytest.raises(ValueError, match="arr_0 is damaged .*CRC"):
        list(f.batches(1000))
    np.savez(tmp_path / "fortran.npz", arr_0=np.asfortranarray(arr))
    with pytest.raises(ValueError, match="Fortran order"):
        NpzImages(tmp_path / "fortran.npz")
    np.savez(tmp_path / "objects.npz", arr_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="must be uint8"):
        NpzImages(tmp_path / "objects.npz")


def test_the_command_line_scores_against_an_adm_reference_with_a_standin_inception(standin_weights, tmp_path,
                                                                                   capsys):
    """The real network (random weights in the published format, its own hash passed) end to end: every metric,
    the JSON file, and the published hash refusing the stand-in in one line."""
    path, sha = standin_weights
    np.savez(tmp_path / "samples.npz", arr_0=images(4, 7, size=24))     # 4 a side: k = 3 needs no more
    ref_images = images(4, 8, size=24)
    np.savez(tmp_path / "ref.npz", arr_0=ref_images, mu=np.zeros(2048), sigma=np.eye(2048) * 1e-4,
             mu_s=np.zeros(2023), sigma_s=np.eye(2023) * 1e-4)
    args = ["fd", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"), "--weights", str(path)]
    assert evaluate.main(args) == 1
    err = capsys.readouterr().err
    assert "is not the expected 6726825d" in err and "refusing to read it" in err and err.count("\n") == 1

    assert evaluate.main([*args, "--weights-sha256", sha, "--batch", "3", "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "samples_fd_inception.json").read_text())
    assert res["fid"] > 0 and res["sfid"] > 0 and res["inception_score"] >= 1
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1
    assert res["statistics"]["fid"]["ref"]["source"] == "statistics stored in the reference file"
    assert res["statistics"]["sfid"]["samples"] == {"source": "computed from the sample file's arr_0", "n": 4}
    assert res["precision_recall"] == {"k": 3, "n_ref": 4, "n_samples": 4}
    assert res["features"]["sha256"] == sha and res["features"]["published_weights"] is False
    assert any("not comparable with published numbers" in n for n in res["notes"])


def test_a_reference_made_from_an_image_folder_holds_adms_members_and_its_count(standin_weights, tmp_path):
    """`evaluate ref`: statistics over every image of a class folder, a seeded subset as arr_0, the count recorded."""
    from PIL import Image
    from rfengine.data.folder import ImageFolderDataset
    from rfengine.eval import InceptionFeatures
    from rfengine.eval.fd import feature_stats
    rng = np.random.default_rng(0)
    for i in range(5):
        folder = tmp_path / "train" / f"n0{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    path, sha = standin_weights
    out = tmp_path / "ref.npz"
    assert evaluate.main(["ref", str(tmp_path / "train"), "--out", str(out), "--size", "16", "--count", "4",
                          "--weights", str(path), "--weights-sha256", sha, "--workers", "0", "--device", "cpu"]) == 0
    with np.load(out) as f:
        assert f["arr_0"].shape == (4, 16, 16, 3) and f["arr_0"].dtype == np.uint8 and int(f["stats_count"]) == 5
        assert f["mu"].shape == (2048,) and f["sigma_s"].shape == (2023, 2023)
        mu, arr_0 = f["mu"], f["arr_0"]
    images = torch.stack([x for x, _ in ImageFolderDataset(tmp_path / "train", 16)])
    feats = InceptionFeatures(path, sha256=sha).extract(images)
    np.testing.assert_allclose(mu, feature_stats(feats["pool"])[0], rtol=1e-5, atol=1e-6)  # all 5, not the 4
    as_uint8 = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert sum(any(np.array_equal(a, b) for b in as_uint8) for a in arr_0) == 4        # arr_0: 4 of the images
    assert read_stats(out)[1] == 5


def test_reference_statistics_that_would_need_pickle_are_named_in_one_line(tmp_path):
    np.savez(tmp_path / "obj.npz", mu=np.array([1, "a"], dtype=object), sigma=np.eye(2))
    with pytest.raises(ValueError, match=r"obj.npz: mu cannot be read \(Object arrays"):
        read_stats(tmp_path / "obj.npz")
