"""Left-ventricular function over the cardiac cycle: volume curves, EDV, ESV, EF, smoothness.

A plausible synthetic cine must not only look like a heart at each frame; its LV must fill and
empty once per cycle, smoothly, with a realistic ejection fraction. These functions turn a label
map (X, Y, Z, T) — ground truth or the segmenter's output — into those numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

from fedcmr4d.data.cohort import LABEL_LV, LABEL_UNLABELLED


def lv_volume_curve(labels: np.ndarray, zooms: Sequence[float]) -> np.ndarray:
    """LV cavity volume in millilitres for every frame.

    Args:
        labels: (X, Y, Z, T) uint8 label map (1 = LV cavity).
        zooms: voxel size (dx, dy, dz) in mm, e.g. ``Subject.zooms``.

    Returns:
        (T,) float64 volumes in ml (1 ml = 1000 mm^3).
    """
    if labels.ndim != 4:
        raise ValueError(f"labels must be (X, Y, Z, T), got shape {labels.shape}")
    voxel_ml = float(np.prod(np.asarray(zooms[:3], dtype=np.float64))) / 1000.0
    return (labels == LABEL_LV).sum(axis=(0, 1, 2)).astype(np.float64) * voxel_ml


def ejection_fraction(edv: float, esv: float) -> float:
    """EF in percent, ``100 (EDV - ESV) / EDV``; NaN when EDV is 0 (no LV found)."""
    return float("nan") if edv <= 0 else 100.0 * (edv - esv) / edv


def curve_smoothness(curve: np.ndarray) -> float:
    """Mean absolute second difference of the EDV-normalised curve, taken cyclically.

    A cycle is periodic, so the last frame's neighbour is the first. A sinusoid-like curve over
    T frames scores about ``EF * (2 pi / T)^2 * 2 / pi``; frame-to-frame jitter raises it. Lower
    is smoother; compare synthetic with real, not with zero. NaN for an empty curve.
    """
    peak = float(np.max(curve)) if curve.size else 0.0
    if peak <= 0 or curve.size < 3:
        return float("nan")
    norm = curve / peak
    second = np.roll(norm, -1) - 2 * norm + np.roll(norm, 1)
    return float(np.mean(np.abs(second)))


@dataclass(frozen=True)
class LVFunction:
    """One subject's LV function.

    Attributes:
        curve_ml: (T,) LV volume per frame from the segmenter.
        edv_ml, esv_ml: end-diastolic / end-systolic volume (max / min of the curve, or the
            labelled ED / ES frames when ``source == "labels"``).
        ef: ejection fraction in percent.
        smoothness: :func:`curve_smoothness` of ``curve_ml``.
        source: ``"labels"`` or ``"segmenter"``: where EDV / ESV / EF came from.
        ef_segmenter: EF from the curve's max and min, whatever ``source`` is (lets the
            segmenter be checked against labels or a phantom's truth).
    """

    curve_ml: np.ndarray
    edv_ml: float
    esv_ml: float
    ef: float
    smoothness: float
    source: str
    ef_segmenter: float

    def to_json(self) -> dict[str, Any]:
        return {
            "curve_ml": [round(float(v), 4) for v in self.curve_ml],
            "edv_ml": self.edv_ml,
            "esv_ml": self.esv_ml,
            "ef": self.ef,
            "smoothness": self.smoothness,
            "source": self.source,
            "ef_segmenter": self.ef_segmenter,
        }


def labelled_ed_es(
    labels: np.ndarray | None, meta: dict[str, Any], zooms: Sequence[float]
) -> tuple[float, float] | None:
    """(EDV, ESV) in ml from the ground-truth labels of the ED and ES frames, if present.

    Needs ``meta["ed_frame"]`` and ``meta["es_frame"]`` (0-based) and those frames labelled
    (not 255); otherwise None.
    """
    if labels is None or "ed_frame" not in meta or "es_frame" not in meta:
        return None
    ed, es = int(meta["ed_frame"]), int(meta["es_frame"])
    frames = labels.shape[3]
    if not (0 <= ed < frames and 0 <= es < frames):
        return None
    picked = labels[..., [ed, es]]
    if np.any(np.all(picked == LABEL_UNLABELLED, axis=(0, 1, 2))):
        return None
    edv, esv = lv_volume_curve(picked, zooms)
    return float(edv), float(esv)


def lv_function(
    predicted: np.ndarray,
    zooms: Sequence[float],
    *,
    labels: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> LVFunction:
    """LV function of one subject.

    Args:
        predicted: (X, Y, Z, T) segmenter labels for every frame (gives the curve).
        zooms: voxel size in mm.
        labels: optional ground-truth (X, Y, Z, T) labels; with ``meta`` ED/ES frames they give
            EDV, ESV and EF instead of the curve's max and min.
        meta: the subject's meta (``ed_frame``, ``es_frame``).
    """
    curve = lv_volume_curve(predicted, zooms)
    curve_ef = ejection_fraction(float(curve.max()), float(curve.min()))
    from_labels = labelled_ed_es(labels, meta or {}, zooms)
    if from_labels is not None:
        edv, esv = from_labels
        source = "labels"
    else:
        edv, esv = float(curve.max()), float(curve.min())
        source = "segmenter"
    ef = ejection_fraction(edv, esv)
    return LVFunction(curve, edv, esv, ef, curve_smoothness(curve), source, curve_ef)


def ef_wasserstein(a: Sequence[float], b: Sequence[float]) -> float:
    """Wasserstein-1 distance (EF points) between two EF samples; NaN values are dropped."""
    x = np.asarray([v for v in a if np.isfinite(v)], dtype=np.float64)
    y = np.asarray([v for v in b if np.isfinite(v)], dtype=np.float64)
    if x.size == 0 or y.size == 0:
        return float("nan")
    return float(scipy.stats.wasserstein_distance(x, y))
