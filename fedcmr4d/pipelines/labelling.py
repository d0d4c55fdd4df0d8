"""Labels for a synthetic cohort: every frame segmented, ED / ES frames and EF in each meta.

A synthetic cine is only useful for training a segmentation model if it comes with a label
map. :func:`label_cohort` runs a trained segmenter (:mod:`fedcmr4d.evaluate.segmenter`) on every
frame of every subject and writes, per subject:

- ``labels.nii.gz``: (X, Y, Z, T) uint8, the cohort label map (0 background, 1 LV cavity,
  2 LV myocardium, 3 RV), every frame labelled (no 255);
- ``meta.json``: ``ed_frame`` / ``es_frame`` (0-based, the frames of largest / smallest LV
  cavity volume in those labels), ``ef`` (percent, from the same two volumes), ``edv_ml``,
  ``esv_ml`` and ``labels_source`` (the segmenter's weights SHA-256);

and records the labelling in ``cohort.json``'s provenance (``labels``: method, segmenter hash,
counts). Every file goes through a temporary name and a rename (:mod:`fedcmr4d.io`).

Why the segmenter and not a label head on the stage-1 latents: ``benchmarks/labels.py`` measures
both on phantoms; docs/evaluation.md gives the figures and the choice.

Privacy: the segmenter is trained on real labelled frames. A cohort sampled from a DP model is
labelled only by a segmenter trained under DP-SGD at every site (``meta.json`` ``privacy.dp``
true; the federated segmenter stage under each site's own DP): labels from a non-private model
of the same sites' data would spend privacy the release does not state. The segmenter's
per-site (ε, δ) then joins the cohort's ``provenance.privacy.sites`` under ``segmenter``: each
site's ledger spans its stages, so that entry is the site's total for the release.

Labelling must happen before the audit: the audit records the hash of every cohort file and the
release refuses files added after it (sample -> label -> audit -> release).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedcmr4d.data.cohort import (
    COHORT_INDEX,
    LABELS_FILE,
    Cohort,
    open_cohort,
    write_subject_labels,
)
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.evaluate.lv import ejection_fraction, lv_volume_curve
from fedcmr4d.evaluate.segmenter import (
    CONFIG_FILE,
    META_FILE,
    NUM_CLASSES,
    WEIGHTS_FILE,
    load_segmenter,
    segment_cine,
)
from fedcmr4d.io import atomic_write_json, sha256_file

METHOD = "segmenter"


@dataclass(frozen=True)
class SubjectLabels:
    """ED / ES / EF of one labelled subject (what goes into its meta.json)."""

    subject_id: str
    ed_frame: int
    es_frame: int
    edv_ml: float
    esv_ml: float
    ef: float

    def meta(self, segmenter_sha256: str) -> dict[str, Any]:
        return {
            "ed_frame": self.ed_frame,
            "es_frame": self.es_frame,
            "edv_ml": round(self.edv_ml, 4),
            "esv_ml": round(self.esv_ml, 4),
            "ef": None if not math.isfinite(self.ef) else round(self.ef, 4),
            "labels_source": {"method": METHOD, "segmenter_sha256": segmenter_sha256},
        }


@dataclass
class LabelResult:
    """What :func:`label_cohort` did."""

    cohort_dir: Path
    segmenter_sha256: str
    subjects: list[SubjectLabels] = field(default_factory=list)

    @property
    def ef(self) -> list[float]:
        return [s.ef for s in self.subjects]

    def summary(self) -> dict[str, Any]:
        finite = [v for v in self.ef if math.isfinite(v)]
        return {
            "n_labelled": len(self.subjects),
            "n_no_lv": len(self.subjects) - len(finite),
            "ef_mean": float(np.mean(finite)) if finite else None,
            "ef_sd": float(np.std(finite)) if finite else None,
            "ef_min": float(np.min(finite)) if finite else None,
            "ef_max": float(np.max(finite)) if finite else None,
            "segmenter_sha256": self.segmenter_sha256,
        }


def ed_es_from_labels(
    labels: np.ndarray, zooms: tuple[float, float, float]
) -> tuple[int, int, float, float, float]:
    """(ed_frame, es_frame, EDV ml, ESV ml, EF %) from a fully labelled (X, Y, Z, T) map.

    ED is the frame of largest LV cavity volume, ES of the smallest (first one on ties); EF is
    NaN when no frame has any LV.
    """
    curve = lv_volume_curve(labels, zooms)
    ed, es = int(np.argmax(curve)), int(np.argmin(curve))
    edv, esv = float(curve[ed]), float(curve[es])
    return ed, es, edv, esv, ejection_fraction(edv, esv)


def cohort_is_dp(index: dict[str, Any]) -> bool:
    """Whether a cohort's provenance names a site (or local run) that trained under DP."""
    privacy = (index.get("provenance") or {}).get("privacy")
    if not isinstance(privacy, dict):
        return False
    sites = privacy.get("sites")
    if not isinstance(sites, dict):
        return False
    for stages in sites.values():
        for entry in (stages or {}).values() if isinstance(stages, dict) else []:
            if isinstance(entry, dict) and entry.get("epsilon") is not None:
                return True
    return False


def check_segmenter_fits(
    segmenter_dir: Path, meta: dict[str, Any], frame_shape: tuple[int, int]
) -> None:
    """Refuse a segmenter whose classes or training grid differ from the cohort's.

    The class count is read from ``meta.json``; the grid from ``meta.json`` ``frame_shape``
    (what it was trained on) when recorded, else from ``config.yaml`` ``data.image_size``.

    Raises:
        ConfigError: naming the file and the mismatch.
    """
    meta_path = segmenter_dir / META_FILE
    classes = meta.get("num_classes")
    if classes != NUM_CLASSES:
        raise ConfigError(
            f"{meta_path}: num_classes {classes!r}, the cohort label map has {NUM_CLASSES} "
            "(0 background, 1 LV, 2 myocardium, 3 RV); train a segmenter with `fedcmr4d train "
            "segmenter`"
        )
    trained = meta.get("frame_shape")
    if isinstance(trained, list) and len(trained) == 2 and min(trained) > 0:
        if tuple(int(v) for v in trained) != tuple(frame_shape):
            raise ConfigError(
                f"{meta_path}: trained on {tuple(trained)} frames, the cohort's are "
                f"{tuple(frame_shape)}; train the segmenter on a cohort of the same grid"
            )
        return
    config_path = segmenter_dir / CONFIG_FILE
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
        size = int(config["data"]["image_size"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{config_path}: cannot read data.image_size of the segmenter's config ({exc})"
        ) from None
    if (size, size) != tuple(frame_shape):
        raise ConfigError(
            f"{config_path}: data.image_size {size}, the cohort's frames are "
            f"{tuple(frame_shape)}; train the segmenter on a cohort of the same grid"
        )


def check_privacy(cohort: Cohort, segmenter_dir: Path, meta: dict[str, Any]) -> None:
    """A DP cohort is labelled only by a segmenter trained under DP."""
    if not cohort_is_dp(cohort.index):
        return
    privacy = meta.get("privacy")
    if isinstance(privacy, dict) and privacy.get("dp") is True:
        return
    raise ConfigError(
        f"{segmenter_dir / META_FILE}: the segmenter was trained without DP (privacy.dp is not "
        f"true), but {cohort.root / COHORT_INDEX} was sampled from a model trained under DP; "
        "labels from it would leak the sites' data outside their budget: release the cohort "
        "unlabelled (see docs/evaluation.md)"
    )


def label_cohort(cohort_dir: str | Path, segmenter_dir: str | Path) -> LabelResult:
    """Segment every frame of every subject; write labels, ED / ES / EF and the provenance.

    Args:
        cohort_dir: a cohort folder (usually a synthetic one from ``fedcmr4d sample``).
        segmenter_dir: a ``fedcmr4d train segmenter`` checkpoint folder.

    Returns:
        Per-subject ED / ES / EF and the segmenter's weights hash.

    Raises:
        ConfigError: the segmenter does not fit the cohort (classes, grid) or is not DP while
            the cohort is.
        InputError: unreadable cohort or segmenter.
    """
    cohort = open_cohort(cohort_dir)
    seg_dir = Path(segmenter_dir)
    model, meta = load_segmenter(seg_dir)
    ids = cohort.subject_ids
    if not ids:
        raise InputError(f"{cohort.root / COHORT_INDEX}: the cohort lists no subjects")
    check_privacy(cohort, seg_dir, meta)
    digest = sha256_file(seg_dir / WEIGHTS_FILE)
    result = LabelResult(cohort.root, digest)
    for subject_id in ids:
        subject = cohort.load(subject_id, with_labels=False)
        check_segmenter_fits(seg_dir, meta, subject.cine.shape[:2])
        labels = segment_cine(model, subject.cine)
        ed, es, edv, esv, ef = ed_es_from_labels(labels, subject.zooms)
        row = SubjectLabels(subject_id, ed, es, edv, esv, ef)
        write_subject_labels(cohort.root, subject_id, labels, row.meta(digest))
        result.subjects.append(row)
    index = dict(cohort.index)
    provenance = dict(index.get("provenance") or {})
    provenance["labels"] = {
        "method": METHOD,
        "segmenter_sha256": digest,
        "segmenter_train_subjects": meta.get("n_train_subjects"),
        "segmenter_steps": meta.get("steps"),
        "segmenter_dp": bool((meta.get("privacy") or {}).get("dp")),
        "n_labelled": len(result.subjects),
        "file": LABELS_FILE,
    }
    segmenter_sites = segmenter_privacy_sites(meta)
    if segmenter_sites:
        privacy = dict(provenance.get("privacy") or {})
        sites = {k: dict(v) for k, v in (privacy.get("sites") or {}).items()}
        for site, entry in segmenter_sites.items():
            sites.setdefault(site, {})["segmenter"] = entry
        provenance["privacy"] = {**privacy, "sites": sites}
    index["provenance"] = provenance
    atomic_write_json(cohort.root / COHORT_INDEX, index)
    return result


def segmenter_privacy_sites(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Site -> the (ε, δ, accountant) it reported for the segmenter stage (empty without DP)."""
    privacy = meta.get("privacy")
    sites = privacy.get("sites") if isinstance(privacy, dict) else None
    if not isinstance(sites, dict):
        return {}
    out = {}
    for site, stages in sites.items():
        entry = stages.get("segmenter") if isinstance(stages, dict) else None
        if isinstance(entry, dict) and entry.get("epsilon") is not None:
            out[str(site)] = {k: entry.get(k) for k in ("epsilon", "delta", "accountant")}
    return out


def unlabelled_subject(cohort: Cohort) -> str | None:
    """The first subject (in index order) without ``labels.nii.gz``, or None."""
    for subject_id in cohort.subject_ids:
        path = cohort.root / subject_id / LABELS_FILE
        if not path.is_file():
            return subject_id
    return None


def require_labels(
    cohort: Cohort,
    remedy: str = "label the cohort first (`fedcmr4d label --synthetic DIR --segmenter SEG`)",
) -> None:
    """Raise :class:`InputError` naming the first subject missing ``labels.nii.gz``.

    ``remedy`` ends the message: what the user should do (the default fits a synthetic cohort).
    """
    missing = unlabelled_subject(cohort)
    if missing is not None:
        raise InputError(f"{cohort.root / missing / LABELS_FILE}: missing; {remedy}")


def label_and_measure(synthetic_dir: str | Path, segmenter_dir: str | Path) -> dict[str, Any]:
    """Label a synthetic cohort (:func:`label_cohort`) and return its EF summary.

    For the demo and the steward's flow: call after sampling and before the audit. Returns
    ``n_labelled``, ``n_no_lv``, ``ef_mean``, ``ef_sd``, ``ef_min``, ``ef_max`` and the
    segmenter's hash.
    """
    return label_cohort(synthetic_dir, segmenter_dir).summary()


__all__ = [
    "LabelResult",
    "SubjectLabels",
    "check_segmenter_fits",
    "cohort_is_dp",
    "ed_es_from_labels",
    "label_and_measure",
    "label_cohort",
    "require_labels",
]
