"""Audit representation: every cine mapped onto one small common grid, robustly normalised.

The memorization audit compares synthetic subjects with real ones that may come from scanners
with other matrix sizes, slice counts and frame counts. Each cine (X, Y, Z, T) is therefore
reduced to a compact array (S, G, G, F_t) on a grid that depends only on the audit parameters:

1. in-plane: centre crop / zero-pad to a square field of view of ``fov_mm`` millimetres (using
   the voxel size from the affine), then resample to ``grid`` x ``grid`` with an anti-aliased
   bilinear filter, then a mild Gaussian low-pass (``lowpass_sigma`` grid pixels, cyclic
   boundary like the shift search) that damps noise;
2. through-plane: the whole stack, first to last slice, linearly resampled to ``slices``
   positions (every slice of the subject contributes; a 6-slice subject on a 6-slice grid is
   kept as it is);
3. time: periodic FFT resampling of the cardiac cycle to ``frames`` frames (the cycle is
   cyclic, so this is exact for band-limited motion and never wraps a discontinuity);
4. intensity: clip to the subject's 1st-99th percentile, subtract the mean, scale to unit
   norm. After this a dot product between two representations is their normalised
   cross-correlation, and global gain/offset changes and mild gamma changes barely move it.

Only the synthetic cohort decides nothing here: the grid is fixed by the parameters, so every
site computes identical representations without seeing each other's data.

Mirrored and slightly rotated copies are caught by searching over :func:`variants` of each
query (flips along x and y, in-plane rotations by ``rotations_deg``); every query -- synthetic
and holdout alike, so the calibration sees the same search -- is compared in all its variants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, signal

from fedcmr4d.data.cohort import Cohort, Subject
from fedcmr4d.errors import ConfigError


@dataclass(frozen=True)
class AuditGrid:
    """Parameters of the common audit grid (recorded in ``audit.json`` under ``method``).

    Attributes:
        fov_mm: square in-plane field of view, centred on the image, in millimetres.
        grid: in-plane pixels of the representation (``grid`` x ``grid``).
        slices: through-plane positions the whole stack is resampled to.
        frames: frames per cardiac cycle after periodic resampling.
        lowpass_sigma: Gaussian low-pass in grid pixels (0 disables it).
        max_shift: in-plane shift searched, in voxels of the original 1 mm grid.
        candidates: references per query scored exactly after a coarse shift-invariant
            pre-selection (0: score every pair; see :mod:`fedcmr4d.audit.distance`).
        flips: also search each query mirrored along x, along y and along both.
        rotations_deg: in-plane rotations (degrees) of each query searched besides 0.
    """

    fov_mm: float = 64.0
    grid: int = 32
    slices: int = 6
    frames: int = 16
    lowpass_sigma: float = 0.7
    max_shift: int = 2
    candidates: int = 32
    flips: bool = True
    rotations_deg: tuple[float, ...] = (-10.0, 10.0)

    def __post_init__(self) -> None:
        if self.fov_mm <= 0 or self.grid < 4 or self.slices < 1 or self.frames < 2:
            raise ConfigError(f"audit grid: invalid parameters {asdict(self)}")
        if self.lowpass_sigma < 0 or self.max_shift < 0 or self.candidates < 0:
            raise ConfigError(f"audit grid: invalid parameters {asdict(self)}")

    @property
    def shift_grid(self) -> int:
        """``max_shift`` voxels (of 1 mm) expressed in grid pixels, rounded up."""
        mm_per_pixel = self.fov_mm / self.grid
        return int(math.ceil(self.max_shift / mm_per_pixel - 1e-9))

    @property
    def n_variants(self) -> int:
        """Query variants searched: (1 + 3 flips) x (1 + rotations)."""
        return (4 if self.flips else 1) * (1 + len(self.rotations_deg))

    def as_dict(self) -> dict[str, Any]:
        """Parameters plus the derived ``shift_grid`` (what ``audit.json`` records)."""
        out: dict[str, Any] = {**asdict(self), "shift_grid": self.shift_grid}
        out["rotations_deg"] = list(self.rotations_deg)
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> AuditGrid:
        """Inverse of :meth:`as_dict` (derived keys are ignored)."""
        values = {k: v for k, v in payload.items() if k in cls.__dataclass_fields__}
        if "rotations_deg" in values:
            values["rotations_deg"] = tuple(float(a) for a in values["rotations_deg"])
        return cls(**values)


def _crop_or_pad(plane: np.ndarray, sizes: tuple[int, int]) -> np.ndarray:
    """Centre crop / zero-pad the first two axes of ``plane`` (X, Y, ...) to ``sizes``."""
    out = plane
    for axis, size in enumerate(sizes):
        n = out.shape[axis]
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, size - n - before)
            out = np.pad(out, pad)
    return out


def _all_slices(cine: np.ndarray, count: int) -> np.ndarray:
    """(X, Y, Z, T) -> (X, Y, count, T): the whole stack linearly resampled to ``count``."""
    z = cine.shape[2]
    if z == count:
        return cine
    position = np.linspace(0.0, z - 1.0, count) if count > 1 else np.array([(z - 1) / 2.0])
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, z - 1)
    weight = (position - low).astype(np.float32)[None, None, :, None]
    return cine[:, :, low, :] * (1.0 - weight) + cine[:, :, high, :] * weight


def represent_cine(
    cine: np.ndarray, spacing_mm: tuple[float, float], grid: AuditGrid
) -> np.ndarray:
    """Map one cine onto the audit grid.

    Args:
        cine: (X, Y, Z, T) float image.
        spacing_mm: in-plane voxel size (x, y) in millimetres.
        grid: the audit grid.

    Returns:
        (slices, grid, grid, frames) float32, zero mean and unit Frobenius norm (all zeros for
        a constant image).
    """
    if cine.ndim != 4 or min(cine.shape) == 0:
        raise ValueError(f"cine must be 4D (X, Y, Z, T), got {cine.shape}")
    volume = _all_slices(np.asarray(cine, dtype=np.float32), grid.slices)
    fov_x, fov_y = (max(1, int(round(grid.fov_mm / max(s, 1e-6)))) for s in spacing_mm)
    volume = _crop_or_pad(volume, (fov_x, fov_y))
    x, y, z, t = volume.shape
    stack = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 3, 0, 1)))  # (Z, T, X, Y)
    stack = stack.reshape(z * t, 1, x, y)
    if (x, y) != (grid.grid, grid.grid):
        stack = F.interpolate(
            stack, size=(grid.grid, grid.grid), mode="bilinear", antialias=True, align_corners=False
        )
    planes = stack.reshape(z, t, grid.grid, grid.grid).numpy().transpose(0, 2, 3, 1)  # (Z,G,G,T)
    if t != grid.frames:
        planes = signal.resample(planes, grid.frames, axis=3)
    if grid.lowpass_sigma > 0:
        planes = ndimage.gaussian_filter(
            planes, sigma=(0, grid.lowpass_sigma, grid.lowpass_sigma, 0), mode="wrap"
        )
    return _normalise(np.asarray(planes, dtype=np.float32))


def _normalise(rep: np.ndarray) -> np.ndarray:
    low, high = np.percentile(rep, [1.0, 99.0])
    if high - low <= 1e-6 * max(1.0, abs(float(high))):
        return np.zeros_like(rep, dtype=np.float32)  # (nearly) constant: no pattern to match
    rep = np.clip(rep, low, high)
    rep = rep - rep.mean()
    return (rep / np.linalg.norm(rep)).astype(np.float32)


def represent_subject(subject: Subject, grid: AuditGrid) -> np.ndarray:
    """:func:`represent_cine` with the voxel size read from the subject's affine."""
    zx, zy, _ = subject.zooms
    return represent_cine(subject.cine, (zx, zy), grid)


def represent_cohort(
    cohort: Cohort, grid: AuditGrid, subject_ids: Sequence[str] | None = None
) -> tuple[list[str], torch.Tensor]:
    """Representations of a cohort's subjects (all, or ``subject_ids``), loaded one at a time.

    Returns:
        (subject ids, tensor (N, slices, grid, grid, frames) float32).
    """
    ids: list[str] = []
    reps: list[np.ndarray] = []
    for subject_id in cohort.subject_ids if subject_ids is None else subject_ids:
        subject = cohort.load(subject_id, with_labels=False)
        ids.append(subject_id)
        reps.append(represent_subject(subject, grid))
    if not reps:
        return ids, torch.zeros((0, grid.slices, grid.grid, grid.grid, grid.frames))
    return ids, torch.from_numpy(np.stack(reps))


def _rotate(reps: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """(N, S, G, G, T) rotated in the (x, y) plane about the grid centre, renormalised."""
    n, s, g, _, t = reps.shape
    planes = reps.permute(0, 1, 4, 2, 3).reshape(n * s * t, 1, g, g)
    angle = math.radians(angle_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=planes.dtype)
    sample_grid = F.affine_grid(theta.expand(planes.shape[0], 2, 3), list(planes.shape), False)
    turned = F.grid_sample(planes, sample_grid, align_corners=False, padding_mode="border")
    turned = turned.reshape(n, s, t, g, g).permute(0, 1, 3, 4, 2)
    turned = turned - turned.mean(dim=(1, 2, 3, 4), keepdim=True)
    norm = turned.reshape(n, -1).norm(dim=1).clamp(min=1e-12)
    return (turned / norm[:, None, None, None, None]).contiguous()


def variants(reps: torch.Tensor, grid: AuditGrid) -> torch.Tensor:
    """Flipped and rotated copies of every representation, renormalised.

    Args:
        reps: (N, S, G, G, T) representations.
        grid: ``flips`` and ``rotations_deg`` say which variants.

    Returns:
        (N, V, S, G, G, T) with variant 0 the representation itself; V = ``grid.n_variants``.
    """
    if reps.shape[0] == 0:
        return reps.unsqueeze(1).expand(0, grid.n_variants, *reps.shape[1:])
    flipped = [reps]
    if grid.flips:
        flipped += [reps.flip(2), reps.flip(3), reps.flip(2).flip(3)]
    out = []
    for base in flipped:
        out.append(base)
        out += [_rotate(base, angle) for angle in grid.rotations_deg]
    return torch.stack(out, dim=1)
