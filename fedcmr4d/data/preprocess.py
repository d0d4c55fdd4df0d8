"""Source subject -> cohort geometry: 1 x 1 mm in-plane, 10 mm slices, F frames, [0, 1].

Why each choice (also in docs/formats.md):

* **Orientation kept.** The output grid uses the source's own direction cosines; only spacing
  and origin change. With ``S`` the (4, 4) map from output voxel to source voxel (diagonal
  scale + offset), the written affine is ``A_src @ S``, so every output voxel maps to the same
  world point it was sampled from. Resampling is separable (axis-aligned in voxel space).
* **Slices.** All slices are kept: the output covers the source stack's extent at 10 mm steps,
  centred on it (the datasets take windows of 6 later).
* **Interpolation.** Image: linear (no overshoot, so [0, 1] stays [0, 1]; cubic buys little at
  1 mm). Labels: nearest neighbour.
* **Time.** Cyclic linear interpolation onto F frames over one cycle, starting at the ED frame
  (so ED is frame 0 of every output). Repetition would put a variable fraction of a second
  cycle into the F frames and break "frame index = cardiac phase" across subjects.
  Labelled source frames go to the nearest output frame.
* **Crop/pad.** ``image_size`` x ``image_size`` around the heart: the centroid of the heart
  labels (ED frame preferred), else the centroid of the voxels with the highest temporal
  standard deviation (the beating heart moves most). Outside the source FOV is background.
* **Scaling.** Percentile clip (0.5 %, 99.5 % of the source cine) to [0, 1]: robust to the few
  very bright voxels (flow, fat) that min-max would let set the scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from fedcmr4d.data.cohort import (
    COHORT_SPACING_MM,
    LABEL_UNLABELLED,
    Subject,
    write_cohort_index,
    write_subject,
)
from fedcmr4d.data.nifti import SourceSubject
from fedcmr4d.errors import InputError

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
FORMATS = ("acdc", "mnms2", "nifti")


def zooms_of(affine: np.ndarray) -> np.ndarray:
    """(3,) voxel size in mm: the column norms of the affine's 3 x 3 part."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def labelled_frames(labels: np.ndarray) -> list[int]:
    """Frames of a (X, Y, Z, T) label map that carry labels (are not all 255)."""
    return [t for t in range(labels.shape[3]) if (labels[..., t] != LABEL_UNLABELLED).any()]


def heart_centre(subject: Subject) -> tuple[np.ndarray, str]:
    """(x, y) heart centre in source voxel coordinates, and how it was found."""
    if subject.labels is not None:
        frames = labelled_frames(subject.labels)
        ed = int(subject.meta.get("ed_frame", -1))
        for t in ([ed] if ed in frames else []) + frames:
            heart = (subject.labels[..., t] > 0) & (subject.labels[..., t] != LABEL_UNLABELLED)
            if heart.any():
                return np.argwhere(heart)[:, :2].mean(axis=0), "heart labels"
    std = subject.cine.std(axis=3)
    threshold = np.percentile(std, 99.0)
    moving = std >= threshold
    if threshold <= 0 or not moving.any():
        centre = (np.array(subject.cine.shape[:2], dtype=np.float64) - 1) / 2
        return centre, "image centre (no temporal variation)"
    weights = std[moving] - threshold + 1e-6
    coords = np.argwhere(moving)[:, :2]
    return (coords * weights[:, None]).sum(axis=0) / weights.sum(), "temporal variance"


def output_grid(
    shape: tuple[int, ...],
    affine: np.ndarray,
    centre_xy: np.ndarray,
    *,
    image_size: int,
    pixel_mm: float,
    slice_mm: float,
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(4, 4) output-voxel -> source-voxel map ``S`` and the output (X, Y, Z) shape."""
    zx, zy, zz = zooms_of(affine)
    scale = np.array([pixel_mm / zx, pixel_mm / zy, slice_mm / zz])
    extent = (shape[2] - 1) * zz
    n_slices = int(np.floor(extent / slice_mm + 1e-6)) + 1
    z0 = 0.0  # output slice 0 on source slice 0: 5 and 10 mm stacks keep whole source slices
    half = (image_size - 1) / 2.0
    offset = np.array([centre_xy[0] - half * scale[0], centre_xy[1] - half * scale[1], z0])
    s = np.eye(4)
    s[:3, :3] = np.diag(scale)
    s[:3, 3] = offset
    return s, (image_size, image_size, n_slices)


def _resample(
    volume: np.ndarray, s: np.ndarray, shape: tuple[int, int, int], order: int, cval: float
) -> np.ndarray:
    """Sample a (X, Y, Z) volume at ``S @ ijk``; background outside the FOV in-plane.

    The stack is padded by one replicated slice at each end so that rounding in ``S`` cannot
    push the first or last slice just outside the volume (scipy gives ``cval`` there).
    """
    padded = np.pad(volume, ((0, 0), (0, 0), (1, 1)), mode="edge")
    offset = s[:3, 3] + np.array([0.0, 0.0, 1.0])
    return ndimage.affine_transform(
        padded,
        np.diag(s[:3, :3]),
        offset=offset,
        output_shape=shape,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
        output=np.float32 if order else volume.dtype,
    )


def cyclic_times(source_frames: int, frames: int, start: int) -> np.ndarray:
    """(F,) source time (in frames, may be fractional) of each output frame, from ``start``."""
    return np.mod(start + np.arange(frames) * source_frames / frames, source_frames)


def preprocess_subject(
    subject: Subject,
    *,
    image_size: int = 384,
    frames: int = 32,
) -> Subject:
    """Resample one source subject into cohort geometry (see the module docstring).

    Args:
        subject: cine (X, Y, Z, T) in source geometry and values; labels optional.
        image_size: in-plane output size (pixels of ``COHORT_SPACING_MM[0]`` mm).
        frames: output frames over one cycle; output frame 0 is the source ED frame.

    Returns:
        A Subject with cine (image_size, image_size, Z', frames) float32 in [0, 1], labels on
        the same grid (255 on unlabelled frames) and ``meta`` extended with the source geometry.
    """
    cine = subject.cine
    if cine.ndim != 4 or min(cine.shape) == 0:
        raise InputError(f"{subject.subject_id}: cine must be 4D (X, Y, Z, T), got {cine.shape}")
    n_src = cine.shape[3]
    ed = int(subject.meta.get("ed_frame", 0)) % n_src
    lo, hi = np.percentile(cine[::2, ::2], [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        raise InputError(f"{subject.subject_id}: image is constant ({lo}); nothing to scale")
    centre, centre_from = heart_centre(subject)
    s, out_shape = output_grid(
        cine.shape,
        subject.affine,
        centre,
        image_size=image_size,
        pixel_mm=COHORT_SPACING_MM[0],
        slice_mm=COHORT_SPACING_MM[2],
    )
    out = np.empty((*out_shape, frames), dtype=np.float32)
    for f, t in enumerate(cyclic_times(n_src, frames, ed)):
        i0 = int(np.floor(t))
        w = float(t - i0)
        volume = (
            cine[..., i0] if w < 1e-6 else (1 - w) * cine[..., i0] + w * cine[..., (i0 + 1) % n_src]
        )
        out[..., f] = _resample(volume.astype(np.float32, copy=False), s, out_shape, 1, float(lo))
    out -= lo
    out /= hi - lo
    np.clip(out, 0.0, 1.0, out=out)
    labels, label_map = _resample_labels(subject, s, out_shape, frames, ed)
    meta = _output_meta(subject, s, frames, ed, label_map, centre_from, (float(lo), float(hi)))
    return Subject(
        subject_id=subject.subject_id,
        cine=out,
        affine=np.asarray(subject.affine, dtype=np.float64) @ s,
        frame_ms=subject.frame_ms * n_src / frames,
        labels=labels,
        meta=meta,
    )


def _output_frame(source_frame: int, ed: int, n_src: int, frames: int) -> int:
    return int(round(((source_frame - ed) % n_src) * frames / n_src)) % frames


def _resample_labels(
    subject: Subject, s: np.ndarray, shape: tuple[int, int, int], frames: int, ed: int
) -> tuple[np.ndarray | None, dict[int, int]]:
    if subject.labels is None:
        return None, {}
    n_src = subject.labels.shape[3]
    out = np.full((*shape, frames), LABEL_UNLABELLED, dtype=np.uint8)
    mapping: dict[int, int] = {}
    for t in labelled_frames(subject.labels):
        f = _output_frame(t, ed, n_src, frames)
        if f in mapping.values():
            continue  # two source frames closer than one output frame: keep the first
        out[..., f] = _resample(subject.labels[..., t], s, shape, 0, 0)
        mapping[t] = f
    return (out if mapping else None), mapping


def _output_meta(
    subject: Subject,
    s: np.ndarray,
    frames: int,
    ed: int,
    label_map: dict[int, int],
    centre_from: str,
    percentiles: tuple[float, float],
) -> dict[str, Any]:
    n_src = subject.cine.shape[3]
    meta = dict(subject.meta)
    meta["source_ed_frame"] = ed
    meta["ed_frame"] = 0
    if "es_frame" in subject.meta:
        es = int(subject.meta["es_frame"])
        meta["source_es_frame"] = es
        meta["es_frame"] = label_map.get(es, _output_frame(es, ed, n_src, frames))
    meta["preprocess"] = {
        "source_shape": list(subject.cine.shape),
        "source_zooms_mm": [round(float(z), 6) for z in zooms_of(subject.affine)],
        "source_frame_ms": round(float(subject.frame_ms), 6),
        "output_to_source_voxel": np.round(s, 9).tolist(),
        "time": "cyclic linear interpolation, output frame 0 = source ED",
        "crop_centre_from": centre_from,
        "intensity_percentiles": [LOW_PERCENTILE, HIGH_PERCENTILE],
        "intensity_clip": [round(p, 6) for p in percentiles],
        "labelled_frames": {str(k): v for k, v in label_map.items()},
    }
    return meta


@dataclass
class PreprocessReport:
    """What a preprocess run wrote and what it rejected (subject id -> one-line reason)."""

    written: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def find_subjects(fmt: str, root: Path) -> list[SourceSubject]:
    """The subjects of a source folder in layout ``fmt`` (acdc, mnms2, nifti)."""
    from fedcmr4d.data.acdc import find_acdc_subjects
    from fedcmr4d.data.mnms2 import find_mnms2_subjects
    from fedcmr4d.data.nifti import find_generic_subjects

    finders = {
        "acdc": find_acdc_subjects,
        "mnms2": find_mnms2_subjects,
        "nifti": find_generic_subjects,
    }
    if fmt not in finders:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not root.is_dir():
        raise InputError(f"{root}: input folder does not exist")
    return finders[fmt](root)


def preprocess_folder(
    fmt: str,
    root: Path,
    out: Path,
    *,
    image_size: int = 384,
    frames: int = 32,
    on_subject: Callable[[str, str | None], None] | None = None,
) -> PreprocessReport:
    """Preprocess every subject of a source folder into the cohort ``out``.

    Each subject is written atomically; a subject that fails (unreadable file, bad shape,
    NaN, missing Info.cfg, labels on another grid ...) is recorded with its one-line reason
    and skipped. ``cohort.json`` is written last, listing only the subjects written.
    ``on_subject(subject_id, error_or_None)`` is called after each subject (progress bars).
    """
    start = time.perf_counter()
    report = PreprocessReport()
    subjects = find_subjects(fmt, root)
    if not subjects:
        raise InputError(f"{root}: no {fmt} subjects found (see docs/formats.md for the layout)")
    for item in subjects:
        error = None
        try:
            source = item.load()
            result = preprocess_subject(source, image_size=image_size, frames=frames)
            write_subject(out, result)
            report.written.append(item.subject_id)
        except InputError as exc:
            error = str(exc)
        except (ValueError, OSError, EOFError, MemoryError) as exc:
            error = f"{item.path}: {type(exc).__name__}: {exc}"
        if error is not None:
            report.rejected[item.subject_id] = error
        if on_subject is not None:
            on_subject(item.subject_id, error)
    write_cohort_index(
        out,
        report.written,
        frames=frames,
        provenance={
            "source": fmt,
            "input": str(root),
            "image_size": image_size,
            "rejected": sorted(report.rejected),
        },
    )
    report.seconds = time.perf_counter() - start
    return report
