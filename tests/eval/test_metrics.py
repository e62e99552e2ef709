"""Fréchet distance, precision/recall and the exposure-bias diagnostics: properties that pin them."""
import numpy as np
import pytest
import torch
from scipy import linalg

from rfengine.eval import feature_stats, frechet_distance, precision_recall
from rfengine.eval.diagnostics import exposure_bias, radial_power_spectrum


def test_fd_matches_the_matrix_square_root_formula_and_its_properties():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) * 1.5 + 0.3
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0, abs=1e-9)
    shift = np.array([1.0, 2, 0, 0, 0, 0])
    assert frechet_distance(m1 + shift, s1, m1, s1) == pytest.approx(5.0, rel=1e-9)


def test_fd_survives_dead_feature_units():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((200, 5)), rng.standard_normal((200, 5))
    a[:, 2] = b[:, 2] = 0.0  # a ReLU unit that never fires: singular covariances
    fd = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert np.isfinite(fd) and 0 <= fd < 0.5


def test_precision_recall_extremes():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((300, 4))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    p, r = precision_recall(real, real[:, :] * 0.05)  # collapsed samples: precise, no recall
    assert p > 0.9 and r < 0.3


def test_radial_spectrum_peaks_at_the_frequency_of_a_cosine():
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x = torch.cos(2 * torch.pi * 3 * xx / 16)[None, None].repeat(2, 1, 1, 1)
    spec = radial_power_spectrum(x)
    assert len(spec) == 9 and int(np.argmax(spec)) == 3


def test_exposure_bias_is_zero_for_the_oracle_velocity_and_grows_without_it():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(8, 1, 16, 16, generator=g), torch.randn(8, 1, 16, 16, generator=g)
    oracle = lambda x, t, y: x1 - x0  # noqa: E731  the true velocity of every paired path
    res = exposure_bias(oracle, x0, x1, None, steps=10)
    assert len(res["t"]) == len(res["paired_error"]) == len(res["energy_gap"]) == 10
    assert max(res["paired_error"]) < 1e-10 and max(abs(v) for v in res["energy_gap"]) < 1e-5
    assert set(res["spectra"]) == {"0.20", "0.80"}  # grid steps nearest 1/4 and 3/4 of the path (ties to even)

    lazy = lambda x, t, y: torch.zeros_like(x)  # noqa: E731  never moves: the bias grows every step
    res = exposure_bias(lazy, x0, x1, None, steps=10)
    assert res["paired_error"][0] < 1e-10 and all(b > a for a, b in zip(res["paired_error"], res["paired_error"][1:]))


def test_inception_extractor_loads_a_local_torchscript_file(tmp_path):
    """The real weights cannot be fetched here: a stand-in with the same interface checks the path
    (uint8 NCHW at 299x299 in, `return_features=True` -> (N, 2048))."""
    from rfengine.eval import InceptionFeatures

    class Stub(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, 299, 299)
            f = x.float().mean((2, 3))
            return f.repeat(1, 683)[:, :2048] if return_features else f

    path = tmp_path / "inception.pt"
    torch.jit.script(Stub()).save(str(path))
    feats = InceptionFeatures(path)(torch.rand(3, 1, 16, 16) * 2 - 1)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        InceptionFeatures(tmp_path / "missing.pt")
