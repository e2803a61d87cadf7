"""Distribution metrics against closed forms and hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.eval.metrics import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    kid,
    precision_recall,
)


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


# --------------------------------------------------------------------------- Frechet distance


def test_fd_2x2_matches_closed_form_for_non_commuting_covariances():
    # For 2x2 PSD A: tr(sqrt(A)) = sqrt(tr A + 2 sqrt(det A)); with A similar to S1 S2,
    # tr((S1 S2)^1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m1, m2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance_from_stats(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-10)


def test_fd_diagonal_covariances_closed_form():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    m1, m2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_from_stats(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fd_matches_complex_eigenvalue_route_in_higher_dimension():
    # Independent route: eigenvalues of the non-symmetric S1 S2 (real, >= 0 in theory).
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(6, rng), _random_spd(6, rng)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    eig = np.linalg.eigvals(s1 @ s2)
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2) - 2 * np.sum(np.sqrt(eig.real))
    assert frechet_distance_from_stats(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)


def test_fd_from_samples_approaches_the_analytic_gaussian_value():
    rng = np.random.default_rng(1)
    d, n = 4, 100_000
    s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
    m1, m2 = np.zeros(d), np.array([1.0, -1.0, 0.5, 0.0])
    analytic = frechet_distance_from_stats(m1, s1, m2, s2)
    xa = rng.multivariate_normal(m1, s1, size=n)
    xb = rng.multivariate_normal(m2, s2, size=n)
    assert frechet_distance(xa, xb) == pytest.approx(analytic, rel=0.02)
    assert analytic > 1.0  # the comparison is not trivially between two zeros


def test_fd_identity_and_translation():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.tensor([1.0, 2.0, 0, 0, 0, 0, 0, -2.0], dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, means differ by `shift`: d^2 = |shift|^2 exactly.
    assert frechet_distance(x, x + shift) == pytest.approx(9.0, rel=1e-9)


def test_gaussian_stats_unbiased_covariance_like_numpy():
    x = np.random.default_rng(2).normal(size=(50, 3))
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu.numpy(), x.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x, rowvar=False), atol=1e-12)


def test_fd_rejects_bad_shapes():
    with pytest.raises(UserError):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(UserError):
        frechet_distance(np.zeros(10), np.zeros(10))


# --------------------------------------------------------------------------- KID


def _mmd2_bruteforce(x: np.ndarray, y: np.ndarray) -> float:
    def k(a, b):
        return (a @ b / len(a) + 1) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_single_full_subset_equals_bruteforce_u_statistic():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 3)), rng.normal(loc=0.5, size=(7, 3))
    mean, std = kid(x, y, subsets=1, subset_size=7)
    assert mean == pytest.approx(_mmd2_bruteforce(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_is_unbiased_against_exact_population_mmd_of_finite_sets():
    # X ~ uniform over the 12 rows of A, Y ~ uniform over B. The population MMD^2 is
    # mean(K_AA) + mean(K_BB) - 2 mean(K_AB), diagonals included. Tiny subsets (m = 6) make
    # the V-statistic's bias (about 1/m of the diagonal excess) far larger than the tolerance.
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(12, 5)), rng.normal(loc=0.3, size=(12, 5))

    def kmean(p, q):
        return float(np.mean((p @ q.T / p.shape[1] + 1) ** 3))

    exact = kmean(a, a) + kmean(b, b) - 2 * kmean(a, b)
    subsets, m = 2000, 6
    x = a[rng.integers(0, 12, size=subsets * m)]
    y = b[rng.integers(0, 12, size=subsets * m)]
    mean, std = kid(x, y, subsets=subsets, subset_size=m, seed=0)
    tolerance = 4 * std / math.sqrt(subsets)
    assert mean == pytest.approx(exact, abs=tolerance)
    diag_excess = np.mean(np.diag((a @ a.T / 5 + 1) ** 3)) - kmean(a, a)
    assert diag_excess / m > 5 * tolerance  # a biased (V-statistic) estimator would fail


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    g = torch.Generator().manual_seed(5)
    same_a, same_b = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    shifted = torch.randn(1000, 16, generator=g) + 0.5
    mean_same, std_same = kid(same_a, same_b, subsets=10, subset_size=300)
    mean_diff, _ = kid(same_a, shifted, subsets=10, subset_size=300)
    assert abs(mean_same) < 3 * std_same
    assert mean_diff > 20 * abs(mean_same) and mean_diff > 10 * std_same


def test_kid_is_reproducible_with_seed():
    x, y = np.random.default_rng(6).normal(size=(2, 300, 4))
    assert kid(x, y, subsets=5, subset_size=100, seed=1) == kid(x, y, subsets=5, subset_size=100, seed=1)


# --------------------------------------------------------------------------- precision / recall


def test_precision_recall_hand_computed_1d():
    # real 0..4 with k=1: every radius is 1. Fakes 0.5 and 2.2 fall inside, 10 and -3 do not.
    # Fake radii (k=1): -3 -> 3.5, 0.5 -> 1.7, 2.2 -> 1.7, 10 -> 7.8; their balls cover all of 0..4.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[0.5], [2.2], [10.0], [-3.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == 0.5
    assert recall == 1.0
    # Without the outlier at 10, real point 4 is 1.8 from 2.2 (radius 1.7): uncovered.
    _, recall_no_outlier = precision_recall(real, fake[[0, 1, 3]], k=1)
    assert recall_no_outlier == pytest.approx(0.8)


def test_precision_recall_identical_sets_and_disjoint_sets():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(7))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_mode_dropping_halves_recall_only():
    g = torch.Generator().manual_seed(8)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    real = torch.randn(2000, 2, generator=g) + centres[torch.arange(2000) % 2]
    fake = torch.randn(1000, 2, generator=g)  # only the first mode
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.9
    assert 0.4 < recall <= 0.5  # the far mode is never covered


def test_precision_recall_batched_equals_bruteforce():
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(120, 3)), rng.normal(loc=0.3, size=(90, 3))
    k = 3

    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    expected_p = np.mean((d_fr <= radii(real)[None]).any(1))
    expected_r = np.mean((d_fr.T <= radii(fake)[None]).any(1))
    for batch_size in (7, 1000):
        p, r = precision_recall(real, fake, k=k, batch_size=batch_size)
        assert p == pytest.approx(expected_p) and r == pytest.approx(expected_r)


def test_precision_recall_needs_more_points_than_k():
    with pytest.raises(UserError):
        precision_recall(np.zeros((3, 2)), np.ones((10, 2)), k=3)
