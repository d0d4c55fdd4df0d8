"""Phantom subjects written in the real source layouts (ACDC, M&Ms-2, generic 4D NIfTI).

Why: the loaders and ``preprocess`` must be tested on what sites actually have: oblique
affines, non-square anisotropic grids (e.g. 256 x 216 at 1.4 mm, 8 mm slices), int16 voxels,
12-35 frames, each dataset's own label map and ED/ES conventions. The phantom is analytic in
world millimetres, so rendering it on such a grid gives exact labels and a known LV volume.

The heart frame is tilted in the world (``heart_to_world``); the source grid is a short-axis
stack in the heart frame (plus an in-plane rotation), so its affine is oblique in the world,
as in scanner data.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from fedcmr4d.data.cohort import LABEL_UNLABELLED
from fedcmr4d.data.phantom import PhantomParams, ed_es_frames, render_phantom, sample_params
from fedcmr4d.io import atomic_write, atomic_write_text

ACDC_FROM_COHORT = np.array([0, 3, 2, 1], dtype=np.uint8)  # cohort LV 1 -> ACDC 3, RV 3 -> 1


@dataclass
class SourceGeometry:
    """A source acquisition grid: (X, Y, Z) voxels, zooms in mm, T frames, obliquity."""

    shape: tuple[int, int, int] = (256, 216, 12)
    zooms: tuple[float, float, float] = (1.4, 1.4, 8.0)
    frames: int = 25
    tilt_deg: float = 35.0  # angle between the heart's long axis and world z
    inplane_deg: float = 20.0  # rotation of the acquisition grid about the long axis
    intensity_scale: float = 1200.0  # int16 range the [0, 1] phantom is stored in


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = np.deg2rad(degrees)
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def source_subject(
    seed: int, geometry: SourceGeometry, *, ed_phase: float = 0.0, vendor: str | None = None
) -> tuple[PhantomParams, np.ndarray, np.ndarray, np.ndarray]:
    """Render one phantom on an oblique source grid.

    Returns:
        params, affine (4, 4), cine (X, Y, Z, T) int16, labels (X, Y, Z, T) uint8 (cohort map).
    """
    nx, ny, nz = geometry.shape
    zx, zy, zz = geometry.zooms
    fov = min(nx * zx, ny * zy)
    slab = (-zz / 2.0, (nz - 0.5) * zz)
    params = sample_params(seed, fov_mm=fov * 0.85, slab_mm=slab, vendor=vendor)
    heart_to_world = np.eye(4)
    heart_to_world[:3, :3] = _rotation(np.array([1.0, 0.4, 0.0]), geometry.tilt_deg)
    heart_to_world[:3, 3] = [12.0, -30.0, 55.0]
    params = replace(params, ed_phase=ed_phase, heart_to_world=heart_to_world.tolist())
    grid = np.eye(4)
    grid[:3, :3] = _rotation(np.array([0.0, 0.0, 1.0]), geometry.inplane_deg) @ np.diag(
        geometry.zooms
    )
    grid[:3, 3] = -grid[:3, :3] @ np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, 0.0])
    affine = heart_to_world @ grid
    cine, labels = render_phantom(params, affine, geometry.shape, geometry.frames)
    stored = np.round(cine * geometry.intensity_scale).astype(np.int16)
    return params, affine, stored, labels


def _save(data: np.ndarray, affine: np.ndarray, path: Path, frame_ms: float | None) -> None:
    """Write a NIfTI through a temporary name and a rename."""
    image = nib.Nifti1Image(data, affine)
    zooms = list(np.linalg.norm(affine[:3, :3], axis=0))
    if data.ndim == 4:
        zooms.append(frame_ms or 1.0)
    image.header.set_zooms(tuple(float(z) for z in zooms))
    image.header.set_xyzt_units("mm", "msec")
    atomic_write(path, lambda tmp: nib.save(image, tmp), mode=0o644)


def write_acdc_patient(
    split_dir: Path, number: int, seed: int, geometry: SourceGeometry, *, ed_phase: float = 0.0
) -> tuple[Path, PhantomParams, np.ndarray]:
    """``split_dir/patientNNN/`` with Info.cfg, 4d, ED/ES frames and _gt (ACDC label map).

    Returns the folder, the params and the cohort-map labels (X, Y, Z, T) for checking.
    """
    pid = f"patient{number:03d}"
    folder = split_dir / pid
    params, affine, cine, labels = source_subject(seed, geometry, ed_phase=ed_phase)
    frame_ms = params.cycle_ms / geometry.frames
    ed, es = ed_es_frames(params, geometry.frames)
    _save(cine, affine, folder / f"{pid}_4d.nii.gz", frame_ms)
    for frame in (ed, es):
        _save(cine[..., frame], affine, folder / f"{pid}_frame{frame + 1:02d}.nii.gz", None)
        acdc = ACDC_FROM_COHORT[labels[..., frame]]
        _save(acdc, affine, folder / f"{pid}_frame{frame + 1:02d}_gt.nii.gz", None)
    group = "NOR" if params.ef >= 0.5 else "DCM"
    atomic_write_text(
        folder / "Info.cfg",
        f"ED: {ed + 1}\nES: {es + 1}\nGroup: {group}\nHeight: 175.0\n"
        f"NbFrame: {geometry.frames}\nWeight: 70.0\n",
    )
    return folder, params, labels


def write_mnms2_subject(
    dataset_dir: Path, number: int, seed: int, geometry: SourceGeometry, *, ed_phase: float = 0.0
) -> tuple[Path, PhantomParams, np.ndarray]:
    """``dataset_dir/NNN/`` with SA_CINE, SA_ED/SA_ES and their _gt (M&Ms-2 = cohort map)."""
    pid = f"{number:03d}"
    folder = dataset_dir / pid
    params, affine, cine, labels = source_subject(seed, geometry, ed_phase=ed_phase)
    frame_ms = params.cycle_ms / geometry.frames
    ed, es = ed_es_frames(params, geometry.frames)
    _save(cine, affine, folder / f"{pid}_SA_CINE.nii.gz", frame_ms)
    for name, frame in (("ED", ed), ("ES", es)):
        _save(cine[..., frame], affine, folder / f"{pid}_SA_{name}.nii.gz", None)
        _save(labels[..., frame], affine, folder / f"{pid}_SA_{name}_gt.nii.gz", None)
    return folder, params, labels


def write_mnms2_information(root: Path, rows: list[tuple[int, str, str]]) -> Path:
    """``dataset_information.csv`` (SUBJECT_CODE, DISEASE, VENDOR, ...) with trailing empty rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["SUBJECT_CODE", "DISEASE", "VENDOR", "SCANNER", "FIELD"])
    for code, disease, vendor in rows:
        writer.writerow([code, disease, vendor, "PhantomScan", "1.5"])
    writer.writerows([["", "", "", "", ""]] * 3)
    path = root / "dataset_information.csv"
    atomic_write_text(path, buffer.getvalue())
    return path


def write_generic_subject(
    folder: Path, subject_id: str, seed: int, geometry: SourceGeometry, *, with_labels: bool = True
) -> tuple[Path, PhantomParams, np.ndarray]:
    """``folder/<id>.nii.gz`` and, optionally, ``<id>_gt.nii.gz`` (4D, 255 off ED/ES)."""
    params, affine, cine, labels = source_subject(seed, geometry)
    frame_ms = params.cycle_ms / geometry.frames
    path = folder / f"{subject_id}.nii.gz"
    _save(cine, affine, path, frame_ms)
    if with_labels:
        ed, es = ed_es_frames(params, geometry.frames)
        sparse = np.full(labels.shape, LABEL_UNLABELLED, dtype=np.uint8)
        sparse[..., [ed, es]] = labels[..., [ed, es]]
        _save(sparse, affine, folder / f"{subject_id}_gt.nii.gz", frame_ms)
    return path, params, labels
