"""Edge sharpness: blur lowers it, noise alone gives little, the spacing is per mm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from fedcmr4d.evaluate.sharpness import edge_sharpness


def _disc_cine(size: int = 32, frames: int = 4) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    disc = (((x - size / 2) ** 2 + (y - size / 2) ** 2) < (size / 4) ** 2).astype(np.float64)
    return np.repeat(disc[:, :, None, None], frames, axis=3).repeat(2, axis=2)


def test_blur_lowers_sharpness_and_noise_alone_is_below_an_edge() -> None:
    sharp = _disc_cine()
    blurred = gaussian_filter(sharp, sigma=(1.5, 1.5, 0, 0))
    rng = np.random.default_rng(0)
    noise = 0.02 * rng.standard_normal(sharp.shape)
    s_sharp = edge_sharpness(sharp, (1.0, 1.0, 10.0))
    s_blur = edge_sharpness(blurred, (1.0, 1.0, 10.0))
    s_noise = edge_sharpness(noise, (1.0, 1.0, 10.0))
    assert s_blur < 0.6 * s_sharp
    assert s_noise < 0.2 * s_sharp


def test_sharpness_is_per_millimetre() -> None:
    cine = _disc_cine()
    assert edge_sharpness(cine, (2.0, 2.0, 10.0)) == pytest.approx(
        edge_sharpness(cine, (1.0, 1.0, 10.0)) / 2
    )


@pytest.mark.parametrize(
    ("cine", "message"),
    [
        (np.zeros((4, 4, 2)), "must be \\(X, Y, Z, T\\)"),
        (np.zeros((2, 8, 1, 1)), "at least 3 x 3"),
        (np.full((4, 4, 1, 1), np.nan), "non-finite"),
    ],
)
def test_bad_cines_are_refused(cine: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        edge_sharpness(cine, (1.0, 1.0, 10.0))
