"""The analytic phantom: determinism, range, labels, EF, contraction, grid independence."""

from __future__ import annotations

import numpy as np
import pytest

from fedcmr4d.data.cohort import LABEL_LV, LABEL_MYO, LABEL_RV, read_subject
from fedcmr4d.data.phantom import (
    frame_phases,
    lv_volume_ml,
    make_phantom_subject,
    render_phantom,
    sample_params,
    write_phantom_cohort,
)


def _lv_ml(labels: np.ndarray, voxel_mm3: float) -> np.ndarray:
    """(T,) LV cavity volume in ml from (X, Y, Z, T) labels."""
    return (labels == LABEL_LV).sum(axis=(0, 1, 2)) * voxel_mm3 / 1000.0


def test_same_seed_same_subject_different_seed_differs() -> None:
    a = make_phantom_subject("a", 3)
    b = make_phantom_subject("b", 3)
    c = make_phantom_subject("c", 4)
    np.testing.assert_array_equal(a.cine, b.cine)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.meta == b.meta
    assert not np.allclose(a.cine, c.cine)


def test_shape_range_geometry_and_meta() -> None:
    s = make_phantom_subject("p", 0, image_size=48, slices=5, frames=12, vendor="B")
    assert s.cine.shape == (48, 48, 5, 12) and s.cine.dtype == np.float32
    assert s.labels is not None and s.labels.shape == s.cine.shape
    assert float(s.cine.min()) >= 0.0 and float(s.cine.max()) <= 1.0
    assert s.zooms == pytest.approx((1.0, 1.0, 10.0))
    assert s.meta["vendor"] == "B" and s.meta["source"] == "phantom" and s.meta["seed"] == 0
    assert 0.35 <= s.meta["ef_true"] <= 0.70
    assert s.meta["group"] in ("phantom-normal", "phantom-low-ef")
    assert 0 <= s.meta["ed_frame"] < 12 and 0 <= s.meta["es_frame"] < 12
    assert 300 < s.frame_ms * 12 < 1300  # one cycle at 46-120 bpm


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_every_label_class_present_and_measured_ef_matches(seed: int) -> None:
    s = make_phantom_subject("p", seed)
    assert s.labels is not None
    assert set(np.unique(s.labels)) == {0, LABEL_LV, LABEL_MYO, LABEL_RV}
    lv = _lv_ml(s.labels, 10.0)
    measured = 1.0 - lv[s.meta["es_frame"]] / lv[s.meta["ed_frame"]]
    assert measured == pytest.approx(s.meta["ef_true"], abs=0.04)
    # ED is the largest LV, ES the smallest.
    assert int(np.argmax(lv)) == s.meta["ed_frame"]
    assert abs(int(np.argmin(lv)) - s.meta["es_frame"]) <= 1


def test_contraction_is_visible_in_the_image() -> None:
    s = make_phantom_subject("p", 5)
    ed, es = s.meta["ed_frame"], s.meta["es_frame"]
    change = np.abs(s.cine[..., es] - s.cine[..., ed]).mean()
    noise_only = np.abs(s.cine[..., ed] - s.cine[..., ed - 1 if ed else -1]).mean()
    assert change > 1.5 * noise_only
    # Blood pool brighter than myocardium for every vendor.
    for vendor in ("A", "B", "C"):
        v = make_phantom_subject("p", 6, vendor=vendor)
        assert v.labels is not None
        blood = v.cine[v.labels == LABEL_LV].mean()
        myo = v.cine[v.labels == LABEL_MYO].mean()
        assert blood > myo + 0.2


def test_unknown_vendor_is_refused() -> None:
    with pytest.raises(ValueError, match="vendor"):
        make_phantom_subject("p", 0, vendor="Z")


def test_oblique_anisotropic_grid_gives_the_same_lv_volume() -> None:
    params = sample_params(11, fov_mm=64.0, slab_mm=(-5.0, 55.0))
    angle = np.deg2rad(25.0)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    zooms = np.array([0.7, 0.9, 5.0])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(zooms)
    affine[:3, 3] = rot @ np.array([-50.0, -45.0, -2.5])
    _, labels = render_phantom(params, affine, (144, 100, 12), 10, noise=False)
    lv = _lv_ml(labels, float(np.prod(zooms)))
    phases = frame_phases(params, 10)
    analytic = np.array([lv_volume_ml(params, float(p)) for p in phases])
    np.testing.assert_allclose(lv, analytic, rtol=0.04)


def test_write_phantom_cohort_round_trip(tmp_path) -> None:
    cohort = write_phantom_cohort(tmp_path / "c", 3, seed=2, image_size=32, frames=8)
    assert cohort.subject_ids == ["phantom000", "phantom001", "phantom002"]
    back = read_subject(tmp_path / "c", "phantom001")
    direct = make_phantom_subject("phantom001", 2 * 100_003 + 1, image_size=32, frames=8)
    np.testing.assert_allclose(back.cine, direct.cine)
    assert back.meta["ef_true"] == pytest.approx(direct.meta["ef_true"])
    assert cohort.index["frames"] == 8
