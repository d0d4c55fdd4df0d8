"""FID maths: closed forms, exact federated pooling, rank-deficient covariances."""

from __future__ import annotations

import numpy as np
import pytest

from fedcmr4d.evaluate.fid import (
    FeatureMoments,
    depth_moments,
    feature_moments,
    fid_across_depth,
    frechet_distance,
    pool_depth_moments,
    pool_moments,
)


def _gaussian(mean: np.ndarray, var: np.ndarray) -> FeatureMoments:
    return FeatureMoments(100, mean, np.diag(var))


def test_diagonal_closed_form() -> None:
    # For diagonal covariances FID = |dm|^2 + sum (sqrt(va) - sqrt(vb))^2.
    a = _gaussian(np.array([0.0, 1.0, 2.0]), np.array([1.0, 4.0, 0.25]))
    b = _gaussian(np.array([1.0, 1.0, 0.0]), np.array([4.0, 1.0, 1.0]))
    expected = (1 + 0 + 4) + (1 + 1 + 0.25)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_same_moments_give_zero_and_shift_gives_squared_distance() -> None:
    rng = np.random.default_rng(0)
    m = feature_moments(rng.normal(size=(200, 8)))
    assert frechet_distance(m, m) == pytest.approx(0.0, abs=1e-8)
    shifted = FeatureMoments(m.n, m.mean + 3.0, m.cov)
    assert frechet_distance(m, shifted) == pytest.approx(9.0 * 8, rel=1e-6)


def test_rank_deficient_covariance_is_finite_and_nonnegative() -> None:
    rng = np.random.default_rng(1)
    a = feature_moments(rng.normal(size=(5, 64)))  # 5 samples in 64 dims: rank 4
    b = feature_moments(rng.normal(size=(5, 64)) + 0.5)
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 0


def test_pooled_moments_equal_moments_of_the_union() -> None:
    rng = np.random.default_rng(2)
    sites = [rng.normal(loc=i, size=(n, 6)) for i, n in enumerate((7, 30, 12))]
    pooled = pool_moments([feature_moments(s) for s in sites])
    direct = feature_moments(np.concatenate(sites))
    assert pooled.n == direct.n == 49
    np.testing.assert_allclose(pooled.mean, direct.mean, atol=1e-12)
    np.testing.assert_allclose(pooled.cov, direct.cov, atol=1e-12)


def test_pool_depth_moments_per_depth_and_round_trip_through_arrays() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3, 4, 5, 6)), rng.normal(size=(2, 4, 5, 6))  # (N, Z, T, D)
    site_a = [FeatureMoments.from_arrays(m.to_arrays()) for m in depth_moments(a)]
    pooled = pool_depth_moments([site_a, depth_moments(b)])
    direct = depth_moments(np.concatenate([a, b]))
    assert len(pooled) == 4
    for p, d in zip(pooled, direct, strict=True):
        np.testing.assert_allclose(p.cov, d.cov, atol=1e-12)
    assert fid_across_depth(pooled, direct) == pytest.approx([0.0] * 4, abs=1e-8)


def test_mismatches_are_refused() -> None:
    rng = np.random.default_rng(4)
    m4, m5 = feature_moments(rng.normal(size=(9, 4))), feature_moments(rng.normal(size=(9, 5)))
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(m4, m5)
    with pytest.raises(ValueError, match="dimensions"):
        pool_moments([m4, m5])
    with pytest.raises(ValueError, match="slice positions"):
        fid_across_depth([m4], [m4, m4])
    with pytest.raises(ValueError, match=r"\(N, Z, T, D\)"):
        depth_moments(np.zeros((2, 3, 4)))
