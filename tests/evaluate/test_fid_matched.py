"""The FID ratio compares synthetic-real and real-real FID at the same sample sizes."""

from __future__ import annotations

import numpy as np

from fedcmr4d.evaluate.fid import depth_moments, fid_across_depth
from fedcmr4d.evaluate.pipeline import matched_fid, real_real_fid


def _cohort(rng: np.random.Generator, n: int) -> np.ndarray:
    """(N, Z, T, D) features of subjects drawn from one distribution (subject effect + frames)."""
    subject = rng.normal(size=(n, 2, 1, 12))
    return subject + 0.5 * rng.normal(size=(n, 2, 8, 12))


def test_a_sample_of_the_real_distribution_scores_a_ratio_near_one() -> None:
    # Synthetic = a fresh draw from the real distribution: a fair ratio is ~1. Comparing all 24
    # synthetic with all 24 real subjects against 12-vs-12 halves would read well below 1.
    rng = np.random.default_rng(0)
    matched, unmatched = [], []
    for _ in range(20):
        real, synthetic = _cohort(rng, 24), _cohort(rng, 24)
        baseline = float(np.mean(real_real_fid(real) or [np.nan]))
        found = matched_fid(synthetic, real)
        assert found is not None and found[1] == 12
        matched.append(float(np.mean(found[0])) / baseline)
        full = fid_across_depth(depth_moments(synthetic), depth_moments(real))
        unmatched.append(float(np.mean(full)) / baseline)
    assert 0.8 < np.median(matched) < 1.25, np.median(matched)
    assert np.median(unmatched) < 0.75, np.median(unmatched)


def test_matched_fid_needs_the_baseline_and_enough_synthetic_subjects() -> None:
    rng = np.random.default_rng(1)
    assert matched_fid(_cohort(rng, 6), _cohort(rng, 3)) is None  # no real-real baseline
    assert matched_fid(_cohort(rng, 2), _cohort(rng, 8)) is None  # fewer than N // 2 synthetic
    found = matched_fid(_cohort(rng, 5), _cohort(rng, 8))  # 4 <= 5 < 8: the same 4 for both halves
    assert found is not None and found[1] == 4 and len(found[0]) == 2
