"""Edge sharpness of a cine: how steep its strongest in-plane edges are, per millimetre.

Why: FID features and LV volumes can both look right while the images are blurred (a model
short of training predicts the mean). A recipient would check this from the NIfTI files alone,
so the evaluation reports it beside FID: the ratio of the synthetic cohort's sharpness to the
real one's (1 = as sharp; below 1 = blurred).

Definition: for each slice and frame, the in-plane gradient magnitude (central differences,
intensity per mm, so two cohorts at different spacings compare) at its 95th percentile over the
slice's pixels; averaged over slices and frames. The percentile keeps the tissue edges (torso,
lungs, blood pool) and leaves out flat regions, whose gradient is the acquisition noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Percentile of a slice's gradient magnitudes taken as its edge steepness.
EDGE_PERCENTILE = 95.0


def edge_sharpness(cine: np.ndarray, zooms: Sequence[float]) -> float:
    """(X, Y, Z, T) cine, voxel size (dx, dy, ...) in mm -> mean 95th-percentile |grad| per mm.

    Raises:
        ValueError: the cine is not 4D, is smaller than 3 x 3 in-plane, or has a non-finite value.
    """
    if cine.ndim != 4:
        raise ValueError(f"cine must be (X, Y, Z, T), got shape {cine.shape}")
    if min(cine.shape[:2]) < 3:
        raise ValueError(f"cine must be at least 3 x 3 in-plane, got {cine.shape[:2]}")
    data = np.asarray(cine, dtype=np.float64)
    if not np.isfinite(data).all():
        raise ValueError("cine holds a non-finite value")
    dx, dy = float(zooms[0]), float(zooms[1])
    gx, gy = np.gradient(data, dx, dy, axis=(0, 1))
    magnitude = np.hypot(gx, gy)  # (X, Y, Z, T)
    per_slice = np.percentile(magnitude.reshape(-1, *magnitude.shape[2:]), EDGE_PERCENTILE, axis=0)
    return float(per_slice.mean())
