"""Distribution metrics on feature vectors: Frechet distance, KID, precision and recall.

Pure tensor math in float64, independent of any network: every function takes two
feature matrices `[N, D]` (torch tensors or numpy arrays) and returns Python floats.
Which network produced the features is the caller's business; only the Inception-v3
features of Heusel et al. make a Frechet distance an "FID".
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from ldmkit.errors import UserError

ArrayLike = Union[torch.Tensor, np.ndarray]

__all__ = [
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kid",
    "precision_recall",
]


def _as_features(x: ArrayLike, what: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Return `x` as a float64 tensor `[N, D]`, raising UserError on a wrong shape."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise UserError(f"{what} must be a 2-D feature matrix [N, D], got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise UserError(f"{what} needs at least 2 feature vectors, got {t.shape[0]}")
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


def _check_same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise UserError(
            f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]} (same extractor for both?)"
        )


# ---------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------


def gaussian_stats(feats: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[D]` and unbiased covariance `[D, D]` (float64) of features `[N, D]`.

    Unbiased (divide by N-1) like `numpy.cov`, which the reference FID code uses.
    """
    x = _as_features(feats, "features")
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric positive semi-definite matrix via `eigh`.

    Rounding can push tiny eigenvalues below zero; they are clipped, which is exact for a
    PSD matrix and keeps the root real (the reason we never need scipy's complex sqrtm).
    """
    sym = (matrix + matrix.T) / 2
    eigvals, eigvecs = torch.linalg.eigh(sym)
    root = eigvals.clamp(min=0).sqrt()
    return (eigvecs * root) @ eigvecs.T


def frechet_distance_from_stats(
    mu_a: ArrayLike, sigma_a: ArrayLike, mu_b: ArrayLike, sigma_b: ArrayLike
) -> float:
    """Frechet (2-Wasserstein) distance between N(mu_a, sigma_a) and N(mu_b, sigma_b).

    d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})
    (Dowson & Landau 1982; used for FID by Heusel et al. 2017, "GANs Trained by a Two
    Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6).

    S_a S_b is not symmetric, but it is similar to the PSD matrix
    M = S_a^{1/2} S_b S_a^{1/2}, so tr((S_a S_b)^{1/2}) = sum(sqrt(eig(M))): two symmetric
    eigendecompositions, no complex arithmetic, no scipy.
    Returns the squared distance d^2, as FID does.
    """
    mu_a, mu_b = (torch.as_tensor(np.asarray(m), dtype=torch.float64).reshape(-1) for m in (mu_a, mu_b))
    sigma_a, sigma_b = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma_a, sigma_b))
    d = mu_a.shape[0]
    for name, s in (("sigma_a", sigma_a), ("sigma_b", sigma_b)):
        if s.shape != (d, d):
            raise UserError(f"{name} must have shape ({d}, {d}), got {tuple(s.shape)}")
    if mu_b.shape[0] != d:
        raise UserError(f"mean dimensions differ: {d} vs {mu_b.shape[0]}")

    root_a = _sqrt_psd(sigma_a)
    middle = root_a @ sigma_b @ root_a
    middle = (middle + middle.T) / 2
    trace_sqrt_product = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    mean_term = (mu_a - mu_b).square().sum()
    value = mean_term + torch.trace(sigma_a) + torch.trace(sigma_b) - 2 * trace_sqrt_product
    # A true distance is >= 0; float rounding on identical inputs can give -1e-12.
    return max(float(value), 0.0)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Squared Frechet distance between Gaussians fitted to two feature sets `[N, D]`.

    Heusel et al. 2017 (FID), computed in float64. With Inception-v3 pool3 features this is
    FID; with any other extractor call it FD_<extractor>.
    """
    a = _as_features(feats_a, "feats_a")
    b = _as_features(feats_b, "feats_b")
    _check_same_dim(a, b)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


# ---------------------------------------------------------------------------------------
# Kernel Inception Distance
# ---------------------------------------------------------------------------------------


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel (Binkowski et al. 2018, sec. 3)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 estimate between equally sized samples x, y `[m, D]`.

    MMD^2_u = 1/(m(m-1)) sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] - 2/m^2 sum_{i,j} k(x_i,y_j)
    (Gretton et al. 2012, "A Kernel Two-Sample Test", eq. 3 with the cross term of the
    U-statistic over all pairs, as in Binkowski et al. 2018, "Demystifying MMD GANs", eq. 2).
    """
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kid(
    feats_a: ArrayLike,
    feats_b: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of unbiased MMD^2.

    Each of `subsets` rounds draws `subset_size` rows without replacement from each set
    (capped at the smaller set), computes the unbiased MMD^2 with the cubic polynomial
    kernel, and the rounds are averaged (the protocol of the KID reference code). The
    estimate is unbiased, so it can be slightly negative when both sets come from one
    distribution. `seed` fixes the subsets, so repeated evaluations agree.
    """
    if subsets < 1:
        raise UserError(f"kid subsets must be >= 1, got {subsets}")
    a = _as_features(feats_a, "feats_a", device)
    b = _as_features(feats_b, "feats_b", device)
    _check_same_dim(a, b)
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise UserError(f"kid subset_size must be >= 2, got {subset_size}")
    # numpy's choice without replacement costs O(m) swaps, not a full O(N) permutation.
    rng = np.random.default_rng(seed)
    values = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        idx_a = torch.from_numpy(rng.choice(a.shape[0], m, replace=False)).to(a.device)
        idx_b = torch.from_numpy(rng.choice(b.shape[0], m, replace=False)).to(b.device)
        values[i] = _unbiased_mmd2(a[idx_a], b[idx_b]).cpu()
    std = float(values.std(unbiased=True)) if subsets > 1 else 0.0
    return float(values.mean()), std


# ---------------------------------------------------------------------------------------
# Improved precision and recall
# ---------------------------------------------------------------------------------------


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances `[len(x), len(y)]`, clamped at 0 (rounding)."""
    d2 = x.square().sum(1, keepdim=True) + y.square().sum(1)[None, :] - 2 * (x @ y.T)
    return d2.clamp_(min=0)


def _knn_radii_squared(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Squared distance from each row of x to its k-th nearest *other* row of x.

    Each point is at distance 0 from itself, so the k-th neighbour is the (k+1)-th
    smallest distance in its row.
    """
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        d2 = _squared_distances(x[start : start + batch_size], x)
        radii[start : start + batch_size] = d2.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _fraction_inside(
    queries: torch.Tensor, support: torch.Tensor, radii2: torch.Tensor, batch_size: int
) -> float:
    """Fraction of queries within the k-NN ball of at least one support point."""
    inside = 0
    for start in range(0, queries.shape[0], batch_size):
        d2 = _squared_distances(queries[start : start + batch_size], support)
        inside += int((d2 <= radii2[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real: ArrayLike,
    fake: ArrayLike,
    k: int = 3,
    *,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, NeurIPS, sec. 2, eq. 1-2).

    The manifold of a set is the union of balls around its points, each with the radius
    of the point's k-th nearest neighbour in the same set.
    precision = fraction of fake points inside the real manifold (are fakes realistic?);
    recall    = fraction of real points inside the fake manifold (is the variety covered?).
    Distances are computed `batch_size` rows at a time, so 10k x 10k needs only
    batch_size x 10k floats at once.
    """
    if k < 1:
        raise UserError(f"precision/recall k must be >= 1, got {k}")
    r = _as_features(real, "real", device)
    f = _as_features(fake, "fake", device)
    _check_same_dim(r, f)
    if min(r.shape[0], f.shape[0]) <= k:
        raise UserError(f"precision/recall needs more than k={k} points in each set")
    real_radii2 = _knn_radii_squared(r, k, batch_size)
    fake_radii2 = _knn_radii_squared(f, k, batch_size)
    precision = _fraction_inside(f, r, real_radii2, batch_size)
    recall = _fraction_inside(r, f, fake_radii2, batch_size)
    return precision, recall
