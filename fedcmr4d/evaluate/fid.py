"""Fréchet distance across depth, from feature moments that a site can share.

FID compares two Gaussians fitted to feature vectors. Here the features come from a 2D network
applied to every frame of one slice position ``z`` (see :mod:`fedcmr4d.evaluate.features`), so a
cohort yields one Gaussian per depth and the comparison is one distance per depth: "FID across
depth". Each frame is one sample (per-frame samples, not one time-pooled vector per subject):
with ``T`` frames per cine that gives ``T`` times more samples for the ``D x D`` covariance,
which keeps the estimate usable for cohorts of tens of subjects, and the Gaussian then describes
the appearance of the slice over the whole cycle (systole and diastole both). Temporal
plausibility itself is judged by the LV volume curves (:mod:`fedcmr4d.evaluate.lv`).

Only moments cross a site's wall: :func:`feature_moments` is what a site computes and returns
(count, mean, covariance per depth), :func:`pool_moments` is what the server does with them (the
exact mean and covariance of the union), and :func:`frechet_distance` needs only moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass(frozen=True)
class FeatureMoments:
    """Sample moments of ``n`` feature vectors of dimension ``D``.

    Attributes:
        n: number of samples.
        mean: (D,) float64 sample mean.
        cov: (D, D) float64 unbiased sample covariance (divides by ``n - 1``; zeros if ``n == 1``).
    """

    n: int
    mean: np.ndarray
    cov: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays, e.g. for a Flower ``ArrayRecord`` or an ``.npz`` file."""
        return {"n": np.asarray([self.n], dtype=np.int64), "mean": self.mean, "cov": self.cov}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureMoments:
        return cls(int(np.asarray(arrays["n"]).ravel()[0]), arrays["mean"], arrays["cov"])


def feature_moments(features: np.ndarray) -> FeatureMoments:
    """Moments of a set of feature vectors.

    Args:
        features: (N, D) array, one row per sample (here: per frame).

    Returns:
        The count, mean and unbiased covariance, in float64.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    dof = max(x.shape[0] - 1, 1)
    cov = centred.T @ centred / dof
    return FeatureMoments(x.shape[0], mean, cov)


def pool_moments(parts: Sequence[FeatureMoments]) -> FeatureMoments:
    """Exact moments of the union of the samples behind ``parts`` (the server side).

    The pooled scatter is the sum of each part's within scatter ``(n_i - 1) C_i`` and its
    between term ``n_i (m_i - m)(m_i - m)^T``, so the result equals :func:`feature_moments` on
    the concatenated samples up to round-off, without any sample leaving its site.
    """
    parts = [p for p in parts if p.n > 0]
    if not parts:
        raise ValueError("pool_moments needs at least one non-empty part")
    dims = {p.mean.shape[0] for p in parts}
    if len(dims) != 1:
        raise ValueError(f"feature dimensions differ between parts: {sorted(dims)}")
    total = sum(p.n for p in parts)
    mean = np.sum([p.n * p.mean for p in parts], axis=0) / total
    scatter = np.zeros_like(parts[0].cov)
    for p in parts:
        delta = (p.mean - mean)[:, None]
        scatter += (p.n - 1) * p.cov + p.n * (delta @ delta.T)
    return FeatureMoments(total, mean, scatter / max(total - 1, 1))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    sym = (matrix + matrix.T) / 2
    values, vectors = scipy.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: FeatureMoments, b: FeatureMoments) -> float:
    """Fréchet distance between the Gaussians N(m_a, C_a) and N(m_b, C_b).

    ``|m_a - m_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^{1/2})``. The last trace is taken as
    ``tr((C_a^{1/2} C_b C_a^{1/2})^{1/2})``, which is the same number but the square root of a
    symmetric PSD matrix: an eigendecomposition gives it without the complex round-off and
    singular-matrix failures of ``sqrtm(C_a @ C_b)`` when covariances are rank-deficient (fewer
    samples than feature dimensions, common for small cohorts).

    Returns:
        The distance, >= 0 (tiny negative round-off is clipped to 0).
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {a.mean.shape} vs {b.mean.shape}")
    diff = a.mean - b.mean
    root_a = _psd_sqrt(a.cov)
    middle = root_a @ b.cov @ root_a
    eigen = scipy.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eigen, 0.0, None)).sum())
    value = float(diff @ diff) + float(np.trace(a.cov)) + float(np.trace(b.cov)) - 2 * tr_covmean
    return max(value, 0.0)


def depth_moments(features: np.ndarray) -> list[FeatureMoments]:
    """Per-depth moments of one cohort's (or one site's) features.

    Args:
        features: (N, Z, T, D) features of N subjects, Z slice positions, T frames.

    Returns:
        Z moments; depth ``z`` pools the N * T frame features of slice ``z``.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (N, Z, T, D), got shape {features.shape}")
    n, z, t, d = features.shape
    return [feature_moments(features[:, k].reshape(n * t, d)) for k in range(z)]


def pool_depth_moments(sites: Sequence[Sequence[FeatureMoments]]) -> list[FeatureMoments]:
    """Server side of the federated form: pool each depth's moments over sites."""
    depths = {len(site) for site in sites}
    if len(depths) != 1:
        raise ValueError(f"sites report different numbers of depths: {sorted(depths)}")
    return [pool_moments([site[k] for site in sites]) for k in range(depths.pop())]


def fid_across_depth(a: Sequence[FeatureMoments], b: Sequence[FeatureMoments]) -> list[float]:
    """One Fréchet distance per slice position; both sides must have the same depths."""
    if len(a) != len(b):
        raise ValueError(f"cohorts have different numbers of slice positions: {len(a)} vs {len(b)}")
    return [frechet_distance(x, y) for x, y in zip(a, b, strict=True)]
