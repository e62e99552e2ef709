"""Fréchet distance, streamed statistics, precision/recall (ADM's protocol against a brute-force computation), the
Inception Score (against ADM's formula) and the exposure-bias diagnostics: properties that pin them."""
import numpy as np
import pytest
import torch
from scipy import linalg

from rfengine.eval import RunningStats, feature_stats, frechet_distance, inception_score, precision_recall
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
    few = feature_stats(b[:4])  # 4 samples in 6 dims: a singular covariance against a positive definite one
    expected = ((few[0] - m1) ** 2).sum() + np.trace(few[1] + s1 - 2 * linalg.sqrtm(few[1] @ s1).real)
    assert frechet_distance(*few, m1, s1) == pytest.approx(expected, rel=1e-6)  # sqrtm of a singular product is
    assert frechet_distance(m1, s1, *few) == pytest.approx(expected, rel=1e-6)  # itself good to about 1e-8


def test_fd_survives_dead_feature_units():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((200, 5)), rng.standard_normal((200, 5))
    a[:, 2] = b[:, 2] = 0.0  # a ReLU unit that never fires: singular covariances
    fd = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert np.isfinite(fd) and 0 <= fd < 0.5


def test_running_stats_equal_the_stats_of_all_rows_at_once():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((203, 7)) * rng.uniform(0.1, 3, 7) + 1e4  # a large mean: the shifted sums keep precision
    rs = RunningStats()
    for part in np.array_split(x, [1, 50, 51, 180]):                     # uneven batches, one of a single row
        rs.update(part.astype(np.float32))
    mu, sigma = rs.stats()
    mu_all, sigma_all = feature_stats(x.astype(np.float32))
    np.testing.assert_allclose(mu, mu_all, rtol=1e-12)
    np.testing.assert_allclose(sigma, sigma_all, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match=r"expected \(b, 7\)"):
        rs.update(np.zeros((2, 5)))


def _brute_force_pr(real, fake, k=3):
    """ADM's definition, written out: a ball around each point reaching its k-th nearest other point of its own set."""
    def radii(x):
        return np.sort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, k]  # column 0 is the point itself
    d = ((fake[:, None] - real[None]) ** 2).sum(-1)                          # (Nf, Nr)
    precision = (d <= radii(real)[None]).any(1).mean()
    recall = (d <= radii(fake)[:, None]).any(0).mean()
    return precision, recall


def test_precision_recall_is_adms_k3_protocol_in_any_batch_size():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((61, 5))
    fake = rng.standard_normal((73, 5)) + 1.5
    want = _brute_force_pr(real, fake)
    assert 0.1 < want[0] < 0.9 and 0.1 < want[1] < 0.9                      # neither side trivial
    for batch in (7, 64, 1000):
        assert precision_recall(real, fake, batch=batch, dtype=torch.float64) == pytest.approx(want, abs=0)
    assert precision_recall(real, fake) == pytest.approx(want, abs=0)       # float32, as evaluate runs it
    with pytest.raises(ValueError, match=r"fake features must be \(N > 3, 5\)"):
        precision_recall(real, fake[:3])


def test_precision_recall_extremes():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((300, 4))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    p, r = precision_recall(real, real[:, :] * 0.05)  # collapsed samples: precise, no recall
    assert p > 0.9 and r < 0.3
    # on the line: the balls of 0 and 3 reach 3 (their 3rd neighbour); -3 and 6 lie on their edges, inside (<=)
    line = np.array([[0.0], [1], [2], [3]])
    assert precision_recall(line, np.array([[-3.0], [6], [7], [1.5]]))[0] == 0.75


def test_inception_score_is_adms_formula_over_splits_in_file_order():
    rng = np.random.default_rng(5)
    pool = rng.standard_normal((23, 6)).astype(np.float32)
    w = torch.from_numpy(rng.standard_normal((6, 11)))
    logits = lambda f: f.double() @ w  # noqa: E731
    p = torch.softmax(logits(torch.from_numpy(pool)), 1).numpy()
    want = np.mean([np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0, keepdims=True))), 1)))
                    for part in (p[0:10], p[10:20], p[20:23])])              # ADM: splits of `split`, the last short
    assert inception_score(logits, pool, split=10, batch=4) == pytest.approx(want, rel=1e-12)
    confident = torch.eye(11)[torch.arange(22) % 11] * 50                    # every class equally often, sure of each
    assert inception_score(lambda f: f, confident.numpy(), split=11) == pytest.approx(11, rel=1e-6)


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
