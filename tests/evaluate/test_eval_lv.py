"""LV volume curves, EF (labels or curve), smoothness and EF Wasserstein distance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcmr4d.evaluate.lv import (
    curve_smoothness,
    ef_wasserstein,
    ejection_fraction,
    labelled_ed_es,
    lv_function,
    lv_volume_curve,
)


def _labels(lv_voxels: list[int]) -> np.ndarray:
    """(8, 8, 2, T) map with lv_voxels[t] LV voxels in frame t, plus some myocardium."""
    labels = np.zeros((8, 8, 2, len(lv_voxels)), dtype=np.uint8)
    for t, count in enumerate(lv_voxels):
        flat = labels[..., t].reshape(-1)
        flat[:count] = 1
        flat[count : count + 5] = 2
        labels[..., t] = flat.reshape(8, 8, 2)
    return labels


def test_volume_curve_uses_voxel_zooms() -> None:
    curve = lv_volume_curve(_labels([100, 50, 80]), (1.5, 1.5, 8.0))
    np.testing.assert_allclose(curve, np.array([100, 50, 80]) * 1.5 * 1.5 * 8.0 / 1000)


def test_ef_from_curve_and_from_labelled_frames() -> None:
    labels = _labels([100, 60, 40, 90])
    f = lv_function(labels, (1.0, 1.0, 10.0))
    assert f.source == "segmenter"
    assert f.ef == pytest.approx(60.0) and f.ef_segmenter == pytest.approx(60.0)
    truth = _labels([100, 50, 40, 90])
    truth[..., 2] = 255  # ES frame per meta is 1; frame 2 unlabelled
    g = lv_function(labels, (1.0, 1.0, 10.0), labels=truth, meta={"ed_frame": 0, "es_frame": 1})
    assert g.source == "labels"
    assert g.edv_ml == pytest.approx(1.0) and g.esv_ml == pytest.approx(0.5)
    assert g.ef == pytest.approx(50.0) and g.ef_segmenter == pytest.approx(60.0)


def test_labelled_ed_es_needs_labelled_frames_and_meta() -> None:
    truth = _labels([100, 50, 40])
    assert labelled_ed_es(truth, {}, (1, 1, 10)) is None
    truth[..., 1] = 255
    assert labelled_ed_es(truth, {"ed_frame": 0, "es_frame": 1}, (1, 1, 10)) is None
    assert labelled_ed_es(truth, {"ed_frame": 0, "es_frame": 7}, (1, 1, 10)) is None
    assert labelled_ed_es(None, {"ed_frame": 0, "es_frame": 1}, (1, 1, 10)) is None


def test_ejection_fraction_of_empty_lv_is_nan() -> None:
    assert math.isnan(ejection_fraction(0.0, 0.0))
    assert math.isnan(lv_function(_labels([0, 0, 0]), (1, 1, 10)).ef)


def test_smoothness_is_lower_for_a_smooth_cycle_than_a_jittery_one() -> None:
    phase = np.arange(16) / 16
    smooth = 100 - 25 * (1 - np.cos(2 * np.pi * phase))
    jitter = smooth + np.random.default_rng(0).normal(0, 4, 16)
    assert curve_smoothness(smooth) < curve_smoothness(jitter)
    assert curve_smoothness(smooth * 3) == pytest.approx(curve_smoothness(smooth))  # scale-free
    assert math.isnan(curve_smoothness(np.zeros(16)))


def test_ef_wasserstein() -> None:
    assert ef_wasserstein([50, 60], [50, 60]) == pytest.approx(0.0)
    assert ef_wasserstein([50, 60], [55, 65]) == pytest.approx(5.0)
    assert ef_wasserstein([50, float("nan")], [52]) == pytest.approx(2.0)
    assert math.isnan(ef_wasserstein([], [50]))
