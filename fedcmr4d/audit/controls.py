"""Positive controls for the audit: near-copies of a cine that a sound audit must flag.

A steward can plant these among synthetic subjects (at a site, from its own training data) to
check that the audit catches memorised patients on that site's data before trusting a "passed".
The tests and ``benchmarks/audit.py`` use them to measure recall.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

NEAR_COPY_KINDS = ("exact", "noise", "shift", "roll", "gamma", "flip", "rotate")

#: In-plane rotation of the ``rotate`` control (between the audit's searched angles 0 and 10).
ROTATE_DEG = 8.0


def near_copy(cine: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A perturbed copy of one cine.

    Args:
        cine: (X, Y, Z, T) float image in [0, 1].
        kind: ``exact``; ``noise`` (+ Gaussian noise sigma 0.02, clipped to [0, 1]); ``shift``
            (2 voxels along x and y, zero filled, not cyclic); ``roll`` (cardiac phase rolled
            cyclically by a quarter cycle); ``gamma`` (intensity ** 1.1); ``flip`` (mirrored
            along x); ``rotate`` (in-plane rotation by :data:`ROTATE_DEG` degrees about the
            image centre).
        rng: source of the noise.

    Returns:
        (X, Y, Z, T) float32 copy.
    """
    cine = np.asarray(cine, dtype=np.float32)
    if kind == "exact":
        out = cine.copy()
    elif kind == "noise":
        out = np.clip(cine + rng.normal(0.0, 0.02, cine.shape), 0.0, 1.0)
    elif kind == "shift":
        out = np.zeros_like(cine)
        out[2:, 2:] = cine[:-2, :-2]
    elif kind == "roll":
        out = np.roll(cine, max(1, cine.shape[3] // 4), axis=3)
    elif kind == "gamma":
        out = np.clip(cine, 0.0, 1.0) ** 1.1
    elif kind == "flip":
        out = cine[::-1].copy()
    elif kind == "rotate":
        out = ndimage.rotate(cine, ROTATE_DEG, axes=(0, 1), reshape=False, order=1, mode="nearest")
    else:
        raise ValueError(f"kind must be one of {NEAR_COPY_KINDS}, got {kind!r}")
    return np.asarray(out, dtype=np.float32)
