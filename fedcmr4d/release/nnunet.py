"""Export a cohort (or a release's cohort) as an nnU-Net v2 raw dataset.

nnU-Net v2 (``documentation/dataset_format.md`` of MIC-DKFZ/nnUNet) trains on 2D or 3D images
with one file per input channel, ``imagesTr/<case>_<XXXX>.nii.gz``, and one integer label map per
case, ``labelsTr/<case>.nii.gz``, on the same geometry; ``dataset.json`` names the channels, the
labels (name -> consecutive integers, background 0), ``numTraining`` and ``file_ending``. It has no
time axis, so each labelled FRAME of a cine becomes one 3D case (as nnU-Net's own ACDC conversion
does with the ED and ES frames):

    Dataset<NNN>_<Name>/
      dataset.json
      imagesTr/<subject>_f<TT>_0000.nii.gz    (X, Y, Z) float32, the subject's affine
      labelsTr/<subject>_f<TT>.nii.gz         (X, Y, Z) uint8: 0 bg, 1 LV, 2 MYO, 3 RV
      imagesTs/<subject>_f<TT>_0000.nii.gz    every frame of subjects with no label map

Frames whose label map is entirely "unlabelled" (255 in the cohort) are not training cases and
are left out; a labelled frame with some unlabelled voxels keeps them as nnU-Net's ``ignore``
label (4, the highest value, declared in ``dataset.json`` only when it occurs).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedcmr4d import __version__
from fedcmr4d.data.cohort import (
    COHORT_INDEX,
    LABEL_BACKGROUND,
    LABEL_LV,
    LABEL_MYO,
    LABEL_RV,
    LABEL_UNLABELLED,
    Cohort,
    open_cohort,
)
from fedcmr4d.errors import ConfigError, InputError

FILE_ENDING = ".nii.gz"
CHANNEL = "0000"
LABELS = {"background": LABEL_BACKGROUND, "LV": LABEL_LV, "MYO": LABEL_MYO, "RV": LABEL_RV}
IGNORE_LABEL = 4
DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+$")


@dataclass
class NnunetExport:
    """What :func:`export_nnunet` wrote."""

    out_dir: Path
    n_training: int
    n_test: int
    subjects_without_labels: list[str]


def find_cohort(path: str | Path) -> Path:
    """The cohort folder of ``path``: a cohort itself, or a release holding ``cohort/``."""
    root = Path(path)
    if (root / COHORT_INDEX).is_file():
        return root
    if (root / "cohort" / COHORT_INDEX).is_file():
        return root / "cohort"
    raise InputError(f"{root}: neither a cohort ({COHORT_INDEX}) nor a release (cohort/)")


def _save(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def export_nnunet(source: str | Path, out_dir: str | Path) -> NnunetExport:
    """Write ``out_dir`` (``Dataset<NNN>_<Name>``, must not exist) from a cohort or release.

    Raises:
        ConfigError: ``out_dir`` exists or is not named ``Dataset<NNN>_<Name>``.
        InputError: unreadable cohort, or a label value outside the cohort's label map.
    """
    cohort = open_cohort(find_cohort(source))
    out = Path(out_dir)
    if not DATASET_NAME.match(out.name):
        raise ConfigError(
            f"{out}: nnU-Net needs the folder named Dataset<NNN>_<Name> (three-digit id, e.g. "
            "Dataset501_SyntheticCine); see nnU-Net's documentation/dataset_format.md"
        )
    if out.exists():
        raise ConfigError(f"{out}: already exists; refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        result = _write(cohort, tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out_dir = out
    return result


def _write(cohort: Cohort, root: Path) -> NnunetExport:
    images_tr, labels_tr, images_ts = root / "imagesTr", root / "labelsTr", root / "imagesTs"
    for folder in (images_tr, labels_tr):
        folder.mkdir(parents=True)
    n_training, n_test, unlabelled, uses_ignore = 0, 0, [], False
    allowed = set(LABELS.values()) | {LABEL_UNLABELLED}
    for subject_id in cohort.subject_ids:
        subject = cohort.load(subject_id)
        affine = np.asarray(subject.affine, dtype=np.float64)
        cine = np.asarray(subject.cine, dtype=np.float32)
        if subject.labels is None:
            unlabelled.append(subject_id)
            images_ts.mkdir(exist_ok=True)
            for t in range(cine.shape[3]):
                _save(cine[..., t], affine, images_ts / f"{subject_id}_f{t:02d}_{CHANNEL}.nii.gz")
                n_test += 1
            continue
        labels = np.asarray(subject.labels)
        bad = set(np.unique(labels).tolist()) - allowed
        if bad:
            raise InputError(
                f"{cohort.root / subject_id}: label values {sorted(bad)} are not in the cohort "
                "label map (0, 1, 2, 3, 255)"
            )
        for t in range(cine.shape[3]):
            frame = labels[..., t]
            if np.all(frame == LABEL_UNLABELLED):
                continue
            if np.any(frame == LABEL_UNLABELLED):
                uses_ignore = True
            seg = np.where(frame == LABEL_UNLABELLED, IGNORE_LABEL, frame).astype(np.uint8)
            case = f"{subject_id}_f{t:02d}"
            _save(cine[..., t], affine, images_tr / f"{case}_{CHANNEL}.nii.gz")
            _save(seg, affine, labels_tr / f"{case}.nii.gz")
            n_training += 1
    labels_json = {**LABELS, **({"ignore": IGNORE_LABEL} if uses_ignore else {})}
    dataset = {
        "channel_names": {"0": "cineMRI"},
        "labels": labels_json,
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
        "name": root.name.split(".tmp-")[0].lstrip("."),
        "description": (
            "Frames of 4D cine cardiac MRI as 3D cases (<subject>_f<frame>); exported by "
            f"fedcmr4d {__version__} from cohort provenance "
            f"{cohort.index.get('provenance', {}).get('source', 'unknown')}"
        ),
        "licence": "see the release's DATASHEET.md and croissant.json",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1, sort_keys=True) + "\n")
    return NnunetExport(root, n_training, n_test, unlabelled)
