"""M&Ms-2 reader: one ``NNN/`` subject folder (short-axis views) -> Subject.

Layout of the public release (``MnM2/``)::

    dataset_information.csv     SUBJECT_CODE (plain integer), DISEASE, VENDOR, SCANNER, FIELD;
                                trailing empty rows
    dataset/001/001_SA_CINE.nii.gz   4D short-axis cine (X, Y, Z, T)
    dataset/001/001_SA_ED.nii.gz     3D ED volume, same grid
    dataset/001/001_SA_ED_gt.nii.gz  ED labels: 1 LV, 2 myocardium, 3 RV (already the cohort map)
    dataset/001/001_SA_ES[_gt].nii.gz
    dataset/001/001_LA_*.nii.gz      long-axis views (not used)

The release gives no ED/ES frame numbers, so they are found by matching the SA_ED / SA_ES
volumes against every SA_CINE frame (smallest RMS difference after z-scoring both, so an
intensity-rescaled copy still matches); a subject whose volume matches no frame closely
(difference > ``MAX_MATCH_DIFF``) is rejected rather than given labels on a wrong frame.
``--input`` may be the ``MnM2`` folder (with ``dataset/``), the ``dataset`` folder, or a single
subject folder; the CSV is looked for beside and above it.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.data.cohort import LABEL_LV, LABEL_MYO, LABEL_RV, LABEL_UNLABELLED, Subject
from fedcmr4d.data.nifti import (
    SourceSubject,
    Volume,
    check_same_grid,
    frame_ms_or_default,
    read_volume,
    remap_labels,
)
from fedcmr4d.errors import InputError

MNMS2_TO_COHORT = {0: 0, 1: LABEL_LV, 2: LABEL_MYO, 3: LABEL_RV}
INFO_CSV = "dataset_information.csv"
MAX_MATCH_DIFF = 0.1  # z-scored RMS difference; 0.1 is a correlation of 0.995


def read_information_csv(path: Path) -> dict[str, dict[str, str]]:
    """Rows of ``dataset_information.csv`` keyed by 3-digit subject id; empty rows skipped."""
    rows: dict[str, dict[str, str]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                code = (row.get("SUBJECT_CODE") or "").strip()
                if not code:
                    continue
                try:
                    rows[f"{int(float(code)):03d}"] = {
                        k: (v or "").strip() for k, v in row.items() if k
                    }
                except ValueError:
                    continue
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read CSV ({exc})") from None
    return rows


def match_frame(volume: Volume, cine: Volume) -> tuple[int, float]:
    """(frame index, difference) of the cine frame closest to a 3D volume.

    The difference is the RMS difference of the two after z-scoring each, sqrt(2 (1 - r)) with
    r the Pearson correlation: 0 for an exact or linearly rescaled copy, about 1.4 for
    unrelated images.
    """
    ref = volume.data.astype(np.float64).ravel()
    ref = (ref - ref.mean()) / (ref.std() or 1.0)
    diffs = []
    for t in range(cine.data.shape[3]):
        frame = cine.data[..., t].astype(np.float64).ravel()
        frame = (frame - frame.mean()) / (frame.std() or 1.0)
        r = float(np.dot(ref, frame)) / ref.size
        diffs.append(float(np.sqrt(max(2.0 * (1.0 - r), 0.0))))
    best = int(np.argmin(diffs))
    return best, diffs[best]


def _phase(
    folder: Path, pid: str, phase: str, cine: Volume, meta: dict[str, Any]
) -> tuple[int | None, np.ndarray | None]:
    """Frame index and remapped labels for phase "ED" or "ES" (None where files are absent)."""
    image_path = folder / f"{pid}_SA_{phase}.nii.gz"
    gt_path = folder / f"{pid}_SA_{phase}_gt.nii.gz"
    if not image_path.exists():
        if gt_path.exists():
            meta[f"{phase.lower()}_labels_dropped"] = f"{image_path.name} missing: frame unknown"
        return None, None
    volume = read_volume(image_path, 3)
    check_same_grid(cine, volume)
    frame, diff = match_frame(volume, cine)
    if diff > MAX_MATCH_DIFF:
        raise InputError(
            f"{image_path}: matches no frame of {cine.path.name} (best frame {frame}, "
            f"z-scored RMS difference {diff:.3f} > {MAX_MATCH_DIFF})"
        )
    meta[f"{phase.lower()}_match_diff"] = round(diff, 6)
    if not gt_path.exists():
        return frame, None
    gt = read_volume(gt_path, 3, labels=True)
    check_same_grid(cine, gt)
    return frame, remap_labels(gt_path, gt.data, MNMS2_TO_COHORT)


def load_mnms2_subject(folder: Path, info: dict[str, str] | None) -> Subject:
    """Read one M&Ms-2 subject folder into a Subject in its source geometry."""
    pid = folder.name
    cine = read_volume(folder / f"{pid}_SA_CINE.nii.gz", 4)
    frames = cine.data.shape[3]
    info = info or {}
    meta: dict[str, Any] = {
        "group": info.get("DISEASE") or "unknown",
        "vendor": info.get("VENDOR") or "unknown",
        "scanner": info.get("SCANNER") or None,
        "field_t": info.get("FIELD") or None,
        "source": "mnms2",
    }
    if not info:
        meta["info_csv"] = f"no row for {pid} in {INFO_CSV}"
    ed, ed_labels = _phase(folder, pid, "ED", cine, meta)
    es, es_labels = _phase(folder, pid, "ES", cine, meta)
    meta["ed_frame"] = ed if ed is not None else 0
    meta["ed_source"] = "matched SA_ED" if ed is not None else "assumed frame 0"
    if es is not None:
        meta["es_frame"] = es
    labels = None
    for frame, lab in ((ed, ed_labels), (es, es_labels)):
        if frame is None or lab is None:
            continue
        if labels is None:
            labels = np.full(cine.data.shape, LABEL_UNLABELLED, dtype=np.uint8)
        labels[..., frame] = lab
    frame_ms = frame_ms_or_default(cine, frames, meta)
    return Subject(pid, cine.data, cine.affine, frame_ms, labels, meta)


def _find_csv(root: Path) -> Path | None:
    for folder in (root, root.parent, root.parent.parent):
        if (folder / INFO_CSV).is_file():
            return folder / INFO_CSV
    return None


def _is_subject_folder(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit()


def find_mnms2_subjects(root: Path) -> list[SourceSubject]:
    """Subject folders under ``root`` (MnM2 folder, its ``dataset/``, or one subject folder)."""
    if _is_subject_folder(root) and any(root.glob(f"{root.name}_SA_*")):
        folders = [root]
    else:
        parent = root / "dataset" if (root / "dataset").is_dir() else root
        folders = [p for p in sorted(parent.iterdir()) if _is_subject_folder(p)]
    csv_path = _find_csv(root)
    rows = read_information_csv(csv_path) if csv_path else {}
    return [
        SourceSubject(f.name, f, partial(load_mnms2_subject, f, rows.get(f"{int(f.name):03d}")))
        for f in folders
    ]
