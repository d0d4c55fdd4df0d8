"""Preprocessing: geometry kept in world space, cyclic time, crop centre, scaling, LV volume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcmr4d.data.cohort import LABEL_LV, LABEL_UNLABELLED, Subject
from fedcmr4d.data.phantom import ed_es_frames
from fedcmr4d.data.phantom_sources import SourceGeometry, source_subject
from fedcmr4d.data.preprocess import cyclic_times, preprocess_subject, zooms_of
from fedcmr4d.errors import InputError


def _oblique_affine(zooms: tuple[float, float, float], degrees: float = 30.0) -> np.ndarray:
    a = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(zooms)
    affine[:3, 3] = [-40.0, 25.0, 70.0]
    return affine


def _world_centroid(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(labels == LABEL_LV).mean(axis=0)
    return affine[:3, :3] @ ijk[:3] + affine[:3, 3]


def _blob_subject(centre_vox: tuple[float, float, float]) -> Subject:
    """A beating sphere on an oblique 1.6 x 1.3 x 10 mm grid, labelled at frames 0 and 4."""
    shape, frames = (80, 96, 7), 10
    zooms = (1.6, 1.3, 10.0)
    affine = _oblique_affine(zooms)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    dist = np.linalg.norm((ijk - np.array(centre_vox)) * np.array(zooms), axis=-1)
    cine = np.zeros((*shape, frames), dtype=np.float32)
    labels = np.full((*shape, frames), LABEL_UNLABELLED, dtype=np.uint8)
    for t in range(frames):
        radius = 18.0 - 6.0 * np.sin(np.pi * t / frames)
        cine[..., t] = 100.0 + 800.0 * (dist < radius)
        if t in (0, 4):
            labels[..., t] = np.where(dist < radius, LABEL_LV, 0)
    meta = {"ed_frame": 0, "es_frame": 4}
    return Subject("blob", cine, affine, 40.0, labels, meta)


def test_output_geometry_keeps_world_position_and_orientation() -> None:
    source = _blob_subject((30.0, 55.0, 3.0))
    out = preprocess_subject(source, image_size=64, frames=16)
    assert out.cine.shape == (64, 64, 7, 16)
    np.testing.assert_allclose(zooms_of(out.affine), [1.0, 1.0, 10.0], atol=1e-6)
    # Same direction cosines as the source.
    src_dirs = source.affine[:3, :3] / zooms_of(source.affine)
    np.testing.assert_allclose(out.affine[:3, :3] / zooms_of(out.affine), src_dirs, atol=1e-9)
    # A labelled voxel's world position agrees within a voxel (here: the sphere's centroid).
    assert out.labels is not None
    before = _world_centroid(source.labels[..., 0], source.affine)
    after = _world_centroid(out.labels[..., 0], out.affine)
    assert np.linalg.norm(before - after) < 1.0
    # The crop is centred on the heart labels.
    centre_out = np.argwhere(out.labels[..., 0] == LABEL_LV).mean(axis=0)[:2]
    np.testing.assert_allclose(centre_out, [31.5, 31.5], atol=1.0)
    assert out.meta["preprocess"]["crop_centre_from"] == "heart labels"


def test_scaling_time_axis_and_label_frames() -> None:
    source = _blob_subject((40.0, 48.0, 3.0))
    source.meta["ed_frame"] = 2  # output frame 0 must be source frame 2
    source.labels[..., 0] = LABEL_UNLABELLED
    source.labels[..., 2] = np.where(source.cine[..., 2] > 500, LABEL_LV, 0)
    out = preprocess_subject(source, image_size=48, frames=20)
    assert float(out.cine.min()) >= 0.0 and float(out.cine.max()) <= 1.0
    assert out.cine.max() == pytest.approx(1.0) and out.cine.min() == pytest.approx(0.0)
    assert out.meta["ed_frame"] == 0 and out.meta["source_ed_frame"] == 2
    # ES (source frame 4) is 2 source frames after ED -> 4 output frames at 20 / 10.
    assert out.meta["es_frame"] == 4
    assert out.labels is not None
    labelled = [t for t in range(20) if (out.labels[..., t] != LABEL_UNLABELLED).any()]
    assert labelled == [0, 4]
    assert out.frame_ms == pytest.approx(40.0 * 10 / 20)
    np.testing.assert_allclose(cyclic_times(10, 20, 2)[:3], [2.0, 2.5, 3.0])
    np.testing.assert_allclose(cyclic_times(10, 20, 9)[2], 0.0)  # wraps around the cycle


def test_image_based_centre_without_labels() -> None:
    source = _blob_subject((20.0, 70.0, 3.0))
    source.labels = None
    out = preprocess_subject(source, image_size=48, frames=8)
    assert out.labels is None
    assert out.meta["preprocess"]["crop_centre_from"] == "temporal variance"
    bright = np.argwhere(out.cine[..., 0] > 0.5).mean(axis=0)[:2]
    np.testing.assert_allclose(bright, [23.5, 23.5], atol=3.0)


def test_constant_image_is_rejected() -> None:
    subject = Subject("flat", np.ones((8, 8, 2, 4), np.float32), np.eye(4), 30.0)
    with pytest.raises(InputError, match="constant"):
        preprocess_subject(subject, image_size=16, frames=8)


@pytest.mark.parametrize(
    "geometry",
    [
        SourceGeometry(shape=(150, 128, 9), zooms=(1.8, 1.8, 10.0), frames=20, tilt_deg=40),
        SourceGeometry(shape=(128, 150, 11), zooms=(2.0, 1.6, 8.0), frames=14, inplane_deg=-35),
    ],
)
def test_lv_volume_at_ed_and_es_is_kept(geometry: SourceGeometry) -> None:
    params, affine, cine, labels = source_subject(21, geometry, ed_phase=0.2)
    ed, es = ed_es_frames(params, geometry.frames)
    sparse = np.full(labels.shape, LABEL_UNLABELLED, dtype=np.uint8)
    sparse[..., [ed, es]] = labels[..., [ed, es]]
    meta = {"ed_frame": ed, "es_frame": es}
    source = Subject("s", cine.astype(np.float32), affine, 35.0, sparse, meta)
    out = preprocess_subject(source, image_size=160, frames=32)
    voxel = float(np.prod(geometry.zooms))
    assert out.labels is not None
    for src_frame, out_frame in ((ed, 0), (es, out.meta["es_frame"])):
        before = (labels[..., src_frame] == LABEL_LV).sum() * voxel
        after = (out.labels[..., out_frame] == LABEL_LV).sum() * 10.0
        assert after == pytest.approx(before, rel=0.05)


@settings(max_examples=12, deadline=None)
@given(
    angles=st.tuples(*(st.floats(-np.pi, np.pi) for _ in range(3))),
    zooms=st.tuples(st.floats(0.7, 2.5), st.floats(0.7, 2.5), st.sampled_from([5.0, 8.0, 10.0])),
    centre=st.tuples(st.floats(12, 28), st.floats(12, 28), st.floats(1.5, 2.5)),
)
def test_world_position_is_kept_for_any_orientation_and_spacing(angles, zooms, centre) -> None:
    """A labelled sphere's world centroid moves less than one output voxel (1 mm in-plane)."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(zooms)
    affine[:3, 3] = [10.0, -20.0, 30.0]
    shape = (40, 40, 5)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    offset = (ijk - np.array(centre)) * np.array(zooms)
    inside = np.linalg.norm(offset * np.array([1.0, 1.0, 0.0]), axis=-1) < 12.0
    inside &= np.abs(offset[..., 2]) < 12.0  # a cylinder across the middle slices
    cine = np.stack([inside * (1.0 + 0.5 * t) for t in range(4)], axis=-1).astype(np.float32)
    labels = np.full((*shape, 4), LABEL_UNLABELLED, dtype=np.uint8)
    labels[..., 0] = np.where(inside, LABEL_LV, 0)
    source = Subject("r", cine, affine, 30.0, labels, {"ed_frame": 0})
    out = preprocess_subject(source, image_size=48, frames=4)
    assert out.labels is not None
    before = _world_centroid(labels[..., 0], affine)
    after = _world_centroid(out.labels[..., 0], out.affine)
    src_dirs = affine[:3, :3] / zooms_of(affine)
    shift = src_dirs.T @ (after - before)  # displacement along the source's own axes
    assert np.all(np.abs(shift[:2]) < 1.0), shift
    assert abs(shift[2]) < zooms[2] / 2 + 1e-6, shift
