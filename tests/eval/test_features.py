"""The digit classifier behind every digits FD ships with the package, so a score means the same on
every machine: it loads without training or writing anything, it is study v3's pinned classifier
bit for bit, its recorded held-out accuracy is what it scores, and a retrained one round-trips."""
from pathlib import Path

import numpy as np
import pytest
import torch

from rfengine.data.digits import DigitsDataset
from rfengine.eval import features
from rfengine.eval.features import DigitsFeatures, train_digits_classifier

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_classifier_is_study_v3s_pin_and_scores_its_recorded_accuracy():
    f = DigitsFeatures()
    assert f.path == features.SHIPPED and f.path.is_file()
    pinned = torch.load(ROOT / "results/digits_v3/digits_classifier.pt", map_location="cpu", weights_only=True)
    for k, v in pinned["model"].items():
        assert torch.equal(f.net.state_dict()[k], v), k
    assert f.accuracy == pytest.approx(float(pinned["accuracy"]), abs=1e-6)
    # the held-out 300 digits of train_digits_classifier(seed=0) (a CPU generator: the same set everywhere)
    ds = DigitsDataset(16)
    test = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:300]
    with torch.no_grad():
        acc = (f.net(ds.images[test]).argmax(1) == ds.labels[test]).float().mean().item()
    assert acc == pytest.approx(f.accuracy, abs=1e-6) and acc > 0.95


def test_features_shape_and_checks():
    f = DigitsFeatures()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    out = f(x)
    assert out.shape == (5, 64) and out.dtype == np.float32 and np.isfinite(out).all()
    with pytest.raises(ValueError, match=r"expected images \(N, 1, 16, 16\)"):
        f(torch.zeros(2, 3, 16, 16))


def test_a_missing_classifier_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        DigitsFeatures(tmp_path / "nope.pt")


def test_retrained_classifier_and_pinned_copy_round_trip(tmp_path):
    trained = train_digits_classifier(tmp_path / "new.pt", seed=1)
    assert 0.8 < trained.accuracy <= 1.0
    again = DigitsFeatures(tmp_path / "new.pt")
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    np.testing.assert_array_equal(trained(x), again(x))
    pinned = DigitsFeatures().save(tmp_path / "pin.pt")  # what a study pins at its first start
    np.testing.assert_array_equal(DigitsFeatures(pinned)(x), DigitsFeatures()(x))
    assert [p.name for p in tmp_path.iterdir()] and not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
