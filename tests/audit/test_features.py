"""Audit representation: common grid across geometries, normalisation, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcmr4d.audit.features import AuditGrid, represent_cine, represent_subject, variants
from fedcmr4d.data.phantom import make_phantom_subject
from fedcmr4d.errors import ConfigError

GRID = AuditGrid(fov_mm=32.0, grid=16, slices=4, frames=8, lowpass_sigma=0.7, max_shift=2)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((32, 32, 6, 16), (1.0, 1.0)), ((48, 40, 3, 25), (1.0, 1.0)), ((20, 20, 9, 8), (1.6, 1.6))],
)
def test_every_geometry_maps_to_the_grid(shape: tuple[int, ...], spacing: tuple[float, float]):
    cine = np.random.default_rng(0).random(shape, dtype=np.float32)
    rep = represent_cine(cine, spacing, GRID)
    assert rep.shape == (4, 16, 16, 8) and rep.dtype == np.float32
    assert abs(float(rep.mean())) < 1e-5
    assert float(np.linalg.norm(rep)) == pytest.approx(1.0, abs=1e-4)


def test_gain_and_offset_do_not_change_the_representation():
    subject = make_phantom_subject("p", 3, image_size=32)
    rep = represent_subject(subject, GRID)
    subject.cine = 0.5 * subject.cine + 0.2
    assert np.allclose(represent_subject(subject, GRID), rep, atol=1e-5)


def test_every_slice_contributes():
    cine = np.random.default_rng(1).random((16, 16, 9, 8), dtype=np.float32)
    grid = AuditGrid(fov_mm=16, grid=16, slices=4, frames=8)
    rep = represent_cine(cine, (1.0, 1.0), grid)
    for z in (0, 8):  # the outermost slices change the representation too
        changed = cine.copy()
        changed[:, :, z] = 0.0
        assert not np.allclose(represent_cine(changed, (1.0, 1.0), grid), rep, atol=1e-3)


def test_flip_and_rotation_variants_contain_the_mirrored_copy():
    subject = make_phantom_subject("p", 3, image_size=32)
    grid = AuditGrid(fov_mm=32.0, grid=16, slices=4, frames=8)
    rep = torch.from_numpy(represent_subject(subject, grid))[None]
    subject.cine = subject.cine[::-1].copy()
    mirrored = torch.from_numpy(represent_subject(subject, grid))[None]
    found = variants(mirrored, grid)
    assert found.shape == (1, grid.n_variants, 4, 16, 16, 8) == (1, 12, 4, 16, 16, 8)
    assert float((found[0] * rep[0]).sum(dim=(1, 2, 3, 4)).max()) > 0.999
    assert float((mirrored[0] * rep[0]).sum()) < 0.99


def test_constant_image_gives_zeros_not_nan():
    rep = represent_cine(np.full((32, 32, 4, 8), 0.3, np.float32), (1.0, 1.0), GRID)
    assert np.all(rep == 0)


def test_shift_in_grid_pixels_rounds_up():
    assert AuditGrid(fov_mm=64, grid=32, max_shift=2).shift_grid == 1
    assert AuditGrid(fov_mm=32, grid=32, max_shift=2).shift_grid == 2
    assert AuditGrid(fov_mm=160, grid=32, max_shift=2).shift_grid == 1
    assert AuditGrid(fov_mm=64, grid=32, max_shift=0).shift_grid == 0


def test_invalid_grid_is_a_config_error():
    with pytest.raises(ConfigError, match="audit grid"):
        AuditGrid(grid=2)


def test_grid_round_trips_through_its_dict():
    grid = AuditGrid(fov_mm=48.0, grid=16, candidates=8)
    assert AuditGrid.from_dict(grid.as_dict()) == grid
