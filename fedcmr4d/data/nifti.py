"""Checked NIfTI reading shared by the loaders, and the generic flat-folder 4D NIfTI source.

Every check raises :class:`~fedcmr4d.errors.InputError` with one line naming the file and the
problem (unreadable or truncated file, a non-NIfTI file with a NIfTI name, wrong number of
dimensions, a zero-size dimension, NaN/Inf voxels, labels on another grid), so that
``fedcmr4d preprocess`` can report it, skip that subject and go on.

Generic layout (``--format nifti``)::

    folder/
      <id>.nii.gz        4D cine (X, Y, Z, T), any orientation and spacing
      <id>_gt.nii.gz     optional labels, same grid: 3D (X, Y, Z) for the ED frame, or
                         4D (X, Y, Z, T) with 255 on unlabelled frames; cohort label map
                         (0 bg, 1 LV, 2 myo, 3 RV)
      <id>.json          optional: {"ed_frame": 0, "es_frame": 10, "group": ..., "vendor": ...}
                         (0-based frames)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedcmr4d.data.cohort import LABEL_LV, LABEL_UNLABELLED, Subject
from fedcmr4d.errors import InputError
from fedcmr4d.io import read_json_object

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DEFAULT_CYCLE_MS = 1000.0  # used only when a header carries no plausible frame time
MIN_CYCLE_MS, MAX_CYCLE_MS = 250.0, 3000.0


@dataclass
class SourceSubject:
    """One subject found in a source folder; ``load()`` reads it (may raise InputError)."""

    subject_id: str
    path: Path
    load: Callable[[], Subject]


@dataclass
class Volume:
    """A checked NIfTI volume: data as float32 (or integer labels), affine, time step."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    frame_ms: float | None


def _frame_ms(image: nib.Nifti1Image) -> float | None:
    """Time between frames in ms from the header, or None when the header does not say."""
    zooms = image.header.get_zooms()
    if len(zooms) < 4 or not np.isfinite(zooms[3]) or float(zooms[3]) <= 0:
        return None
    _, t_unit = image.header.get_xyzt_units()
    scale = {"msec": 1.0, "sec": 1000.0, "usec": 0.001}.get(t_unit)
    if scale is None:
        return None
    return float(zooms[3]) * scale


def read_volume(path: Path, ndim: int | tuple[int, ...], *, labels: bool = False) -> Volume:
    """Read a NIfTI fully and check it.

    Args:
        path: the file.
        ndim: accepted number(s) of dimensions (a 4D file with a trailing T of 1 counts as 3D).
        labels: read as integer labels (values must be whole numbers) instead of float32.

    Raises:
        InputError: naming ``path`` and the problem.
    """
    accepted = (ndim,) if isinstance(ndim, int) else ndim
    if not path.is_file():
        raise InputError(f"{path}: file is missing")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for non-NIfTI content
        raise InputError(f"{path}: not a NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI-1/2 image ({type(image).__name__})")
    shape = tuple(int(s) for s in image.shape)
    if any(s == 0 for s in shape):
        raise InputError(f"{path}: zero-size dimension in shape {shape}")
    try:
        raw = np.asarray(image.dataobj)
    except Exception as exc:
        raise InputError(
            f"{path}: truncated or corrupt data ({type(exc).__name__}: {exc})"
        ) from None
    if raw.shape != shape:
        raise InputError(f"{path}: data holds {raw.shape}, header says {shape} (truncated?)")
    if raw.ndim == 5 and raw.shape[3] == 1:  # some writers put time on the 5th axis
        raw = raw[:, :, :, 0, :]
    if raw.ndim == 4 and raw.shape[3] == 1 and 3 in accepted:
        raw = raw[..., 0]
    if raw.ndim not in accepted:
        want = " or ".join(f"{n}D" for n in accepted)
        raise InputError(f"{path}: expected {want}, got {raw.ndim}D with shape {raw.shape}")
    if labels:
        data = _as_labels(path, raw)
    else:
        data = raw.astype(np.float32, copy=False)
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise InputError(f"{path}: {bad} NaN/Inf voxels")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: invalid (singular or non-finite) affine")
    return Volume(path, data, affine, _frame_ms(image))


def _as_labels(path: Path, raw: np.ndarray) -> np.ndarray:
    if not np.isfinite(raw).all():
        raise InputError(f"{path}: label map contains NaN/Inf")
    rounded = np.rint(raw)
    if not np.array_equal(rounded, raw) or rounded.min() < 0 or rounded.max() > 255:
        raise InputError(f"{path}: label map must hold whole numbers 0-255")
    return rounded.astype(np.uint8)


def check_same_grid(image: Volume, labels: Volume) -> None:
    """Labels must lie on the image's voxel grid (same X, Y, Z and affine within 1e-3 mm)."""
    if labels.data.shape[:3] != image.data.shape[:3]:
        raise InputError(
            f"{labels.path}: labels on a grid other than the image's: shape "
            f"{labels.data.shape[:3]} vs {image.data.shape[:3]} in {image.path.name}"
        )
    if not np.allclose(labels.affine, image.affine, atol=1e-3, rtol=1e-4):
        raise InputError(
            f"{labels.path}: labels on a grid other than the image's: affine differs from "
            f"{image.path.name}"
        )


def remap_labels(path: Path, labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Map source label values onto the cohort map; unknown values are an error."""
    present = set(np.unique(labels).tolist())
    unknown = sorted(present - set(mapping))
    if unknown:
        raise InputError(f"{path}: unexpected label values {unknown} (known: {sorted(mapping)})")
    lut = np.full(256, LABEL_UNLABELLED, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[labels]


def frame_ms_or_default(volume: Volume, frames: int, meta: dict[str, Any]) -> float:
    """The header's frame time, or an assumed 1 s cycle (recorded in ``meta``).

    A header frame time whose cycle (``frame_ms * frames``) is outside 250-3000 ms (240-20 bpm)
    is treated as missing: some exporters write 1 s or 1 ms placeholders.
    """
    if volume.frame_ms is not None:
        cycle = volume.frame_ms * frames
        if MIN_CYCLE_MS <= cycle <= MAX_CYCLE_MS:
            meta["frame_ms_source"] = "header"
            return volume.frame_ms
        meta["frame_ms_source"] = (
            f"assumed {DEFAULT_CYCLE_MS:.0f} ms cycle (header cycle {cycle:.0f} ms implausible)"
        )
        return DEFAULT_CYCLE_MS / frames
    meta["frame_ms_source"] = f"assumed {DEFAULT_CYCLE_MS:.0f} ms cycle (header has none)"
    return DEFAULT_CYCLE_MS / frames


def strip_nifti_suffix(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return read_json_object(path, "JSON sidecar")


def _check_frame(path: Path, key: str, value: Any, frames: int) -> int:
    if not isinstance(value, int) or not 0 <= value < frames:
        raise InputError(f"{path}: {key}={value!r} must be a 0-based frame in [0, {frames})")
    return value


def load_generic_subject(cine_path: Path, subject_id: str) -> Subject:
    """Read ``<id>.nii.gz`` (+ optional ``<id>_gt.nii.gz`` and ``<id>.json``)."""
    folder = cine_path.parent
    cine = read_volume(cine_path, 4)
    frames = cine.data.shape[3]
    sidecar_path = folder / f"{subject_id}.json"
    sidecar = _read_sidecar(sidecar_path)
    meta: dict[str, Any] = {
        "source": "nifti",
        "group": str(sidecar.get("group", "unknown")),
        "vendor": str(sidecar.get("vendor", "unknown")),
        "source_file": cine_path.name,
    }
    labels = None
    gt_path = next(
        (
            folder / f"{subject_id}_gt{s}"
            for s in NIFTI_SUFFIXES
            if (folder / f"{subject_id}_gt{s}").exists()
        ),
        None,
    )
    if gt_path is not None:
        gt = read_volume(gt_path, (3, 4), labels=True)
        check_same_grid(cine, gt)
        if gt.data.ndim == 4 and gt.data.shape[3] != frames:
            raise InputError(f"{gt_path}: {gt.data.shape[3]} frames, cine has {frames}")
        allowed = {0: 0, 1: 1, 2: 2, 3: 3, LABEL_UNLABELLED: LABEL_UNLABELLED}
        mapped = remap_labels(gt_path, gt.data, allowed)
        if mapped.ndim == 3:
            ed = _check_frame(sidecar_path, "ed_frame", sidecar.get("ed_frame", 0), frames)
            labels = np.full(cine.data.shape, LABEL_UNLABELLED, dtype=np.uint8)
            labels[..., ed] = mapped
        else:
            labels = mapped
    if "ed_frame" in sidecar:
        ed_frame = _check_frame(sidecar_path, "ed_frame", sidecar["ed_frame"], frames)
        meta["ed_source"] = "sidecar"
    elif labels is not None:
        lv = np.where(labels == LABEL_UNLABELLED, 0, labels == LABEL_LV).sum(axis=(0, 1, 2))
        ed_frame = int(np.argmax(lv))
        meta["ed_source"] = "largest labelled LV"
    else:
        ed_frame = 0
        meta["ed_source"] = "assumed frame 0"
    meta["ed_frame"] = ed_frame
    if "es_frame" in sidecar:
        meta["es_frame"] = _check_frame(sidecar_path, "es_frame", sidecar["es_frame"], frames)
    frame_ms = frame_ms_or_default(cine, frames, meta)
    return Subject(subject_id, cine.data, cine.affine, frame_ms, labels, meta)


def find_generic_subjects(root: Path) -> list[SourceSubject]:
    """Every ``<id>.nii.gz`` in ``root`` that is not a ``_gt`` label file, sorted by id."""
    found = []
    for path in sorted(root.iterdir()):
        stem = strip_nifti_suffix(path.name)
        if stem is None or stem.endswith("_gt") or not path.is_file():
            continue
        found.append(SourceSubject(stem, path, partial(load_generic_subject, path, stem)))
    return found
