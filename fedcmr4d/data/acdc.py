"""ACDC (Automated Cardiac Diagnosis Challenge) reader: one ``patientNNN/`` folder -> Subject.

Layout of the public release (``database/``)::

    training/patient001/Info.cfg                  "ED: 1", "ES: 12", "Group: DCM", "Height: 184.0",
                                                  "NbFrame: 30", "Weight: 95.0"  (frames 1-based)
    training/patient001/patient001_4d.nii.gz      4D cine (X, Y, Z, T)
    training/patient001/patient001_frame01.nii.gz     ED volume (3D)
    training/patient001/patient001_frame01_gt.nii.gz  ED labels: 1 RV, 2 myocardium, 3 LV
    training/patient001/patient001_frame12[_gt].nii.gz  ES
    testing/patient101/...                        same layout

Labels are remapped to the cohort map (1 LV, 2 myo, 3 RV); frames other than ED and ES hold 255.
``--input`` may be the database folder (with ``training/`` and/or ``testing/``), one of those
split folders, or a single patient folder.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.data.cohort import LABEL_LV, LABEL_MYO, LABEL_RV, LABEL_UNLABELLED, Subject
from fedcmr4d.data.nifti import (
    SourceSubject,
    check_same_grid,
    frame_ms_or_default,
    read_volume,
    remap_labels,
)
from fedcmr4d.errors import InputError

ACDC_TO_COHORT = {0: 0, 1: LABEL_RV, 2: LABEL_MYO, 3: LABEL_LV}
COHORT_TO_ACDC = {v: k for k, v in ACDC_TO_COHORT.items()}
SPLITS = ("training", "testing")


def parse_info_cfg(path: Path) -> dict[str, str]:
    """``key: value`` lines of ``Info.cfg``; ED, ES and NbFrame must be present."""
    if not path.is_file():
        raise InputError(f"{path}: Info.cfg is missing (ACDC needs ED/ES frames from it)")
    info: dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise InputError(f"{path}: line {number} is not 'key: value': {line!r}")
        key, value = line.split(":", 1)
        info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info:
            raise InputError(f"{path}: missing '{key}:' line")
    return info


def _int_field(path: Path, info: dict[str, str], key: str) -> int:
    try:
        return int(float(info[key]))
    except ValueError:
        raise InputError(f"{path}: {key} is not an integer: {info[key]!r}") from None


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def load_acdc_subject(folder: Path) -> Subject:
    """Read one ACDC patient folder into a Subject in its source geometry."""
    pid = folder.name
    info_path = folder / "Info.cfg"
    info = parse_info_cfg(info_path)
    ed1, es1 = _int_field(info_path, info, "ED"), _int_field(info_path, info, "ES")
    cine = read_volume(folder / f"{pid}_4d.nii.gz", 4)
    frames = cine.data.shape[3]
    for key, value in (("ED", ed1), ("ES", es1)):
        if not 1 <= value <= frames:
            raise InputError(f"{info_path}: {key}={value} outside the cine's frames 1..{frames}")
    meta: dict[str, Any] = {
        "ed_frame": ed1 - 1,
        "es_frame": es1 - 1,
        "group": info.get("Group", "unknown"),
        "vendor": "Siemens",
        "source": "acdc",
        "split": folder.parent.name if folder.parent.name in SPLITS else "unknown",
        "height_cm": _float_or_none(info.get("Height")),
        "weight_kg": _float_or_none(info.get("Weight")),
    }
    if "NbFrame" in info and _int_field(info_path, info, "NbFrame") != frames:
        meta["nb_frame_mismatch"] = f"Info.cfg NbFrame={info['NbFrame']}, cine has {frames}"
    labels = None
    for frame1 in sorted({ed1, es1}):
        gt_path = folder / f"{pid}_frame{frame1:02d}_gt.nii.gz"
        if not gt_path.exists():
            continue
        gt = read_volume(gt_path, 3, labels=True)
        check_same_grid(cine, gt)
        if labels is None:
            labels = np.full(cine.data.shape, LABEL_UNLABELLED, dtype=np.uint8)
        labels[..., frame1 - 1] = remap_labels(gt_path, gt.data, ACDC_TO_COHORT)
    frame_ms = frame_ms_or_default(cine, frames, meta)
    return Subject(pid, cine.data, cine.affine, frame_ms, labels, meta)


def _is_patient_folder(path: Path) -> bool:
    return path.is_dir() and path.name.startswith("patient")


def find_acdc_subjects(root: Path) -> list[SourceSubject]:
    """Patient folders under ``root`` (database, split folder, or one patient folder)."""
    if _is_patient_folder(root) and (root / f"{root.name}_4d.nii.gz").exists():
        folders = [root]
    else:
        parents = [root / s for s in SPLITS if (root / s).is_dir()] or [root]
        folders = [
            p for parent in parents for p in sorted(parent.iterdir()) if _is_patient_folder(p)
        ]
    return [SourceSubject(f.name, f, partial(load_acdc_subject, f)) for f in folders]
