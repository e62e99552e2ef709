"""The TF FID Inception: TF1's resize, the three feature sets ADM's evaluator takes from the graph (pool, the
spatial features behind sFID, the bias-free logits behind IS), and the weights file's checks: a file with another
SHA-256 is refused before it is read, a file that would run code is refused, both published forms load."""
import numpy as np
import pytest
import torch

from rfengine import storage
from rfengine.eval import InceptionFeatures, inception


@pytest.fixture(scope="module")
def net(standin_weights):
    path, sha = standin_weights
    return inception.load_inception(path, sha)[0]


def test_resize_is_tf1_bilinear_without_half_pixel_centres():
    x = torch.tensor([[[[0.0, 10.0]]]]).expand(1, 1, 2, 2)                 # rows [0, 10]
    out = inception.resize_bilinear_tf1(x.contiguous(), 4)
    # TF1: source column i * 2/4 = 0, 0.5, 1, 1.5 -> 0, 5, 10, 10 (PyTorch's bilinear gives 0, 2.5, 7.5, 10)
    assert out[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]
    assert out[0, 0, :, 1].tolist() == [5.0] * 4
    y = torch.rand(2, 3, 7, 5)
    assert torch.equal(inception.resize_bilinear_tf1(y, 7)[..., :5, :], inception.resize_bilinear_tf1(y, 7)[..., :5, :])
    sq = torch.rand(1, 3, 9, 9)
    assert torch.equal(inception.resize_bilinear_tf1(sq, 9), sq)            # same size: the identity, as in TF


def test_features_are_the_pool_the_mixed_6d_1x1_branch_and_bias_free_logits(net):
    seen = {}
    hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("b1x1", o))
    x = torch.rand(2, 3, 40, 24) * 255
    try:
        with torch.no_grad():
            pool, spatial = net(x)
    finally:
        hook.remove()
    assert pool.shape == (2, 2048) and spatial.shape == (2, 17 * 17 * 7) and pool.dtype == torch.float32
    # ADM: mixed_6/conv:0 [..., :7] of the NHWC graph, flattened: channel fastest
    want = seen["b1x1"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(spatial, want) and spatial[0, 1] == seen["b1x1"][0, 1, 0, 0]
    assert torch.all(net.fc.bias != 0)  # the stand-in has a bias, which the IS logits must leave out
    assert torch.allclose(net.logits(pool), pool @ net.fc.weight.T) and net.logits(pool).shape == (2, 1008)
    assert not torch.allclose(net.logits(pool), net.fc(pool))


def test_extractor_takes_package_images_and_gives_the_metric_features(standin_weights):
    path, sha = standin_weights
    ext = InceptionFeatures(path, sha256=sha, batch=2)
    assert ext.info["sha256"] == sha and ext.info["published_weights"] is False
    gray = torch.rand(3, 1, 16, 16) * 2 - 1
    out = ext.extract(gray)
    assert out["pool"].shape == (3, 2048) and out["spatial"].shape == (3, 2023)
    assert out["pool"].dtype == np.float32 and np.isfinite(out["pool"]).all()
    # [-1, 1] images go in as their uint8 pixel values, gray repeated to RGB
    pixels = ((gray + 1) * 127.5).round().expand(-1, 3, -1, -1)
    with torch.no_grad():
        np.testing.assert_array_equal(out["pool"], ext.net(pixels)[0].numpy())
    assert ext.logits(torch.from_numpy(out["pool"])).shape == (3, 1008)


def test_a_weights_file_with_another_hash_is_refused_before_it_is_read(standin_weights, monkeypatch):
    path, _ = standin_weights

    def no_read(*a, **k):
        raise AssertionError("torch.load was called on an unverified file")
    monkeypatch.setattr(torch, "load", no_read)
    with pytest.raises(ValueError, match="is not the expected 6726825d.*published.*refusing to read it") as e:
        inception.load_inception(path)                                      # the published hash by default
    assert "\n" not in str(e.value)


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())
    path = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(ValueError, match="objects other than tensors.*refusing") as e:
        inception.load_inception(path, storage.sha256_file(path))           # its hash passes: the load refuses
    assert not marker.exists() and "\n" not in str(e.value)


def test_both_published_forms_load_and_a_wrong_state_is_named(standin_weights, tmp_path, net):
    path, _ = standin_weights
    # torch-fidelity's converter writes no num_batches_tracked entries
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    loaded = inception.load_inception(plain, storage.sha256_file(plain))[0]
    assert torch.equal(loaded.Mixed_7c.branch_pool.conv.weight, net.Mixed_7c.branch_pool.conv.weight)
    del state["fc.bias"]
    torch.save(state, plain)
    with pytest.raises(ValueError, match="not the FID Inception's state dict.*fc.bias"):
        inception.load_inception(plain, storage.sha256_file(plain))


def test_missing_weights_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        inception.find_weights(tmp_path / "nope.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="pass --weights PATH.*weights-inception-2015-12-05-6726825d.pth"):
        inception.find_weights(None, download=False)
    cached = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert inception.find_weights(None, download=False) == cached           # pytorch-fid's name in the cache


def test_same_features_as_torch_fidelity(standin_weights, net):
    """Where torch-fidelity imports (it needs torchvision), its InceptionV3 with the same weights gives the same
    pool features and IS logits bit for bit (checked on 2026-12-01 against its 5e211a9 on CPU)."""
    tf = pytest.importorskip("torch_fidelity")
    theirs = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                            feature_extractor_weights_path=str(standin_weights[0]))
    x = (torch.rand(2, 3, 64, 48) * 255).round()
    with torch.no_grad():
        pool, _ = net(x)
        their_pool, their_logits = theirs(x.to(torch.uint8))
    assert torch.equal(pool, their_pool) and torch.equal(net.logits(pool), their_logits)
