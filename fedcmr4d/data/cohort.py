"""The on-disk cohort format shared by real, preprocessed and synthetic data (DESIGN.md).

Layout::

    cohort/
      cohort.json               format version, subject ids, spacing, frames, provenance
      <subject_id>/cine.nii.gz  4D float32 in [0, 1], X x Y x Z x T, zooms (1, 1, 10, frame_ms)
      <subject_id>/labels.nii.gz  optional, uint8 same grid: 0 bg, 1 LV, 2 LV myo, 3 RV, 255 none
      <subject_id>/meta.json    ed_frame, es_frame, group, vendor, source, ...

Every write goes to a temporary name in the same folder and is renamed when complete, so a
crash never leaves a folder that looks like a finished subject or cohort.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedcmr4d.errors import InputError
from fedcmr4d.io import atomic_write, atomic_write_json, read_json_object

FORMAT_VERSION = 1
COHORT_INDEX = "cohort.json"
CINE_FILE = "cine.nii.gz"
LABELS_FILE = "labels.nii.gz"
META_FILE = "meta.json"

COHORT_SPACING_MM: tuple[float, float, float] = (1.0, 1.0, 10.0)
"""Voxel size (x, y, z) in mm of every cohort: 1 x 1 mm in-plane, 10 mm slices.

The format fixes it (no config key): preprocessing resamples sources onto it, phantoms and
sampled cohorts are drawn on it, and ``cohort.json`` records it.
"""

LABEL_BACKGROUND, LABEL_LV, LABEL_MYO, LABEL_RV = 0, 1, 2, 3
LABEL_UNLABELLED = 255
LABEL_NAMES = {LABEL_LV: "LV cavity", LABEL_MYO: "LV myocardium", LABEL_RV: "RV"}


@dataclass
class Subject:
    """One subject's cine in memory.

    Attributes:
        subject_id: folder name in the cohort; letters, digits, ``-`` and ``_``.
        cine: (X, Y, Z, T) float32 image.
        affine: (4, 4) voxel -> world (RAS mm) matrix.
        frame_ms: time between frames in milliseconds.
        labels: optional (X, Y, Z, T) uint8 label map; frames without labels hold 255.
        meta: ``ed_frame``, ``es_frame`` (0-based), ``group``, ``vendor``, ``source`` ...
    """

    subject_id: str
    cine: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    frame_ms: float = 30.0
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm along X, Y, Z, from the affine's column norms."""
        norms = np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])


def _check_subject_id(subject_id: str) -> None:
    ok = subject_id and all(c.isalnum() or c in "-_." for c in subject_id)
    if not ok or subject_id.startswith("."):
        raise InputError(f"subject id {subject_id!r}: use letters, digits, '-', '_' or '.' only")


def _nifti(volume: np.ndarray, affine: np.ndarray, frame_ms: float) -> nib.Nifti1Image:
    image = nib.Nifti1Image(volume, np.asarray(affine, dtype=np.float64))
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    image.header.set_zooms((*(float(z) for z in zooms), float(frame_ms)))
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    return image


def _validate_subject(subject: Subject) -> None:
    cine = subject.cine
    if cine.ndim != 4 or min(cine.shape) == 0:
        raise InputError(f"{subject.subject_id}: cine must be 4D (X, Y, Z, T), got {cine.shape}")
    if not np.isfinite(cine).all():
        raise InputError(f"{subject.subject_id}: cine contains NaN or Inf")
    if subject.labels is not None and subject.labels.shape != cine.shape:
        raise InputError(
            f"{subject.subject_id}: labels {subject.labels.shape} differ from cine {cine.shape}"
        )


def write_subject(cohort_dir: str | Path, subject: Subject) -> Path:
    """Write one subject folder atomically; replaces an existing folder of the same id."""
    _check_subject_id(subject.subject_id)
    _validate_subject(subject)
    cohort_dir = Path(cohort_dir)
    cohort_dir.mkdir(parents=True, exist_ok=True)
    final = cohort_dir / subject.subject_id
    tmp = cohort_dir / f".tmp-{subject.subject_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        cine = np.ascontiguousarray(subject.cine, dtype=np.float32)
        nib.save(_nifti(cine, subject.affine, subject.frame_ms), tmp / CINE_FILE)
        if subject.labels is not None:
            labels = np.ascontiguousarray(subject.labels, dtype=np.uint8)
            nib.save(_nifti(labels, subject.affine, subject.frame_ms), tmp / LABELS_FILE)
        meta = {"subject_id": subject.subject_id, **subject.meta}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if final.exists():
            trash = cohort_dir / f".old-{subject.subject_id}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_subject_labels(
    cohort_dir: str | Path, subject_id: str, labels: np.ndarray, meta_update: dict[str, Any]
) -> Path:
    """Add ``labels.nii.gz`` to an existing subject and merge ``meta_update`` into its meta.

    Each file goes through a temporary name and a rename (the labels first, the meta last, so a
    meta that names ED/ES frames always has its labels beside it). The label map takes the cine's
    grid: affine and frame time are read from ``cine.nii.gz``.

    Args:
        labels: (X, Y, Z, T) uint8 map, the cine's shape.
        meta_update: keys written into ``meta.json`` (existing keys of the same name replaced).
    """
    folder = Path(cohort_dir) / subject_id
    cine_img = _open_nifti(folder / CINE_FILE)  # its grid only
    if tuple(labels.shape) != tuple(cine_img.shape):
        raise InputError(
            f"{folder / CINE_FILE}: labels {labels.shape} differ from {cine_img.shape}"
        )
    zooms = cine_img.header.get_zooms()
    frame_ms = float(zooms[3]) if len(zooms) > 3 else 0.0
    image = _nifti(np.ascontiguousarray(labels, dtype=np.uint8), cine_img.affine, frame_ms)
    atomic_write(folder / LABELS_FILE, lambda tmp: nib.save(image, tmp), mode=0o644)
    meta: dict[str, Any] = {}
    if (folder / META_FILE).exists():
        meta = read_json_object(folder / META_FILE, "subject meta")
    atomic_write_json(folder / META_FILE, {**meta, **meta_update, "subject_id": subject_id})
    return folder / LABELS_FILE


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """The image's header (voxels not read yet); a missing or unreadable file names itself."""
    if not path.is_file():
        raise InputError(f"{path}: file is missing")
    try:
        return nib.load(str(path))  # type: ignore[return-value]
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: not a readable NIfTI ({type(exc).__name__}: {exc})") from None


def _load_nifti(path: Path, dtype: Any = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its voxels, read once (a truncated or corrupt file fails here, naming it)."""
    image = _open_nifti(path)
    try:
        data = np.asarray(image.dataobj, dtype=dtype)  # type: ignore[attr-defined]
    except Exception as exc:
        raise InputError(f"{path}: not a readable NIfTI ({type(exc).__name__}: {exc})") from None
    return image, data


def read_subject(cohort_dir: str | Path, subject_id: str, with_labels: bool = True) -> Subject:
    """Read one subject folder back; raises :class:`InputError` naming the bad file."""
    folder = Path(cohort_dir) / subject_id
    cine_img, cine = _load_nifti(folder / CINE_FILE, np.float32)
    if cine.ndim != 4:
        raise InputError(f"{folder / CINE_FILE}: expected 4D (X, Y, Z, T), got shape {cine.shape}")
    if not np.isfinite(cine).all():
        raise InputError(f"{folder / CINE_FILE}: contains NaN or Inf voxels")
    zooms = cine_img.header.get_zooms()
    frame_ms = float(zooms[3]) if len(zooms) > 3 else 0.0
    labels = None
    if with_labels and (folder / LABELS_FILE).exists():
        labels = _load_nifti(folder / LABELS_FILE)[1].astype(np.uint8)
        if labels.shape != cine.shape:
            raise InputError(f"{folder / LABELS_FILE}: shape {labels.shape} != cine {cine.shape}")
    meta: dict[str, Any] = {}
    if (folder / META_FILE).exists():
        meta = read_json_object(folder / META_FILE, "subject meta")
    meta.pop("subject_id", None)
    return Subject(subject_id, cine, cine_img.affine, frame_ms, labels, meta)


def cohort_affine(image_size: int) -> np.ndarray:
    """The cohort grid's (4, 4) voxel -> world mm map.

    :data:`COHORT_SPACING_MM` voxels, in-plane centre at the world origin, slice k at
    ``k * COHORT_SPACING_MM[2]`` mm.
    """
    affine = np.diag([*COHORT_SPACING_MM, 1.0])
    affine[:2, 3] = -(image_size - 1) / 2.0 * np.asarray(COHORT_SPACING_MM[:2])
    return affine


def write_cohort_index(
    cohort_dir: str | Path,
    subject_ids: list[str],
    *,
    spacing: tuple[float, float, float] = COHORT_SPACING_MM,
    frames: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``cohort.json``; call it last, after every subject folder is complete."""
    cohort_dir = Path(cohort_dir)
    path = cohort_dir / COHORT_INDEX
    atomic_write_json(
        path,
        {
            "format_version": FORMAT_VERSION,
            "subjects": sorted(subject_ids),
            "spacing_mm": list(spacing),
            "frames": frames,
            "provenance": provenance or {},
        },
    )
    return path


@dataclass
class Cohort:
    """A cohort folder opened for reading; subjects load lazily."""

    root: Path
    index: dict[str, Any]

    @property
    def subject_ids(self) -> list[str]:
        return list(self.index["subjects"])

    def __len__(self) -> int:
        return len(self.subject_ids)

    def load(self, subject_id: str, with_labels: bool = True) -> Subject:
        return read_subject(self.root, subject_id, with_labels)

    def __iter__(self) -> Iterator[Subject]:
        for subject_id in self.subject_ids:
            yield self.load(subject_id)


def open_cohort(cohort_dir: str | Path) -> Cohort:
    """Open a cohort; raises :class:`InputError` if ``cohort.json`` is missing or malformed."""
    root = Path(cohort_dir)
    path = root / COHORT_INDEX
    if not path.is_file():
        raise InputError(f"{path}: missing; is {root} a cohort folder? (see docs/formats.md)")
    index = read_json_object(path, "cohort index")
    for key in ("format_version", "subjects"):
        if key not in index:
            raise InputError(f"{path}: missing key '{key}'")
    if index["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {index['format_version']} != {FORMAT_VERSION}")
    for subject_id in index["subjects"]:
        if not (root / subject_id).is_dir():
            raise InputError(f"{root / subject_id}: listed in {COHORT_INDEX} but missing")
    return Cohort(root, index)
