"""``croissant.json``: Croissant 1.1 JSON-LD metadata of a release (with the RAI vocabulary).

What it holds, from the release folder, ``provenance.json`` and ``audit.json`` only:

- ``distribution``: one ``cr:FileObject`` per file of the release (relative ``contentUrl``,
  ``sha256``, size, media type) -- the same hashes as ``manifest.json``, which in turn lists
  ``croissant.json`` and is signed;
- ``recordSet`` ``subjects``: one record per synthetic subject, with inline ``data`` (so a reader
  needs no NIfTI support to list them): subject id, cine file, labels file (empty when the subject
  has none), ED and ES frame (-1 when not recorded), frames, voxel spacing and frame time;
- licence, and the Responsible-AI fields that say the data are synthetic and how they were made
  (``rai:hasSyntheticData``, ``rai:dataCollection``, ``rai:dataCollectionType``,
  ``prov:wasGeneratedBy``), the audit's verdict and (epsilon, delta) per site where the provenance
  records them (``rai:personalSensitiveInformation`` in words, ``fedcmr4d:audit`` and
  ``fedcmr4d:privacy`` as JSON).

:func:`build_croissant` is called by :func:`fedcmr4d.release.export.build_release` before the
manifest is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib

from fedcmr4d.data.cohort import CINE_FILE, COHORT_INDEX, LABELS_FILE, META_FILE
from fedcmr4d.errors import InputError
from fedcmr4d.io import list_files, read_json_object, sha256_file

CROISSANT_FILE = "croissant.json"
CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
DEFAULT_LICENSE = "https://creativecommons.org/licenses/by/4.0/"

#: The JSON-LD context of Croissant 1.1 (as mlcroissant writes it), plus RAI, PROV and ours.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "prov": "http://www.w3.org/ns/prov#",
    "fedcmr4d": "urn:fedcmr4d:",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

_MEDIA_TYPES = {
    ".nii.gz": "application/gzip",
    ".json": "application/json",
    ".md": "text/markdown",
    ".html": "text/html",
}

#: (field name, schema.org type, description) of the ``subjects`` record set, in order.
SUBJECT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("subject_id", "sc:Text", "Synthetic subject id (the folder name under cohort/)."),
    ("cine", "sc:Text", "Relative path of the 4D cine NIfTI (X x Y x Z x T, float32 in [0, 1])."),
    (
        "labels",
        "sc:Text",
        "Relative path of the label map NIfTI (0 background, 1 LV cavity, 2 LV myocardium, 3 RV, "
        "255 unlabelled frame); empty when the subject has none.",
    ),
    ("ed_frame", "sc:Integer", "End-diastolic frame, 0-based; -1 when not recorded."),
    ("es_frame", "sc:Integer", "End-systolic frame, 0-based; -1 when not recorded."),
    (
        "ef",
        "sc:Float",
        "Ejection fraction in percent from the labels' LV cavity volume curve; -1 when not "
        "recorded.",
    ),
    ("frames", "sc:Integer", "Frames over the cardiac cycle."),
    ("spacing_x_mm", "sc:Float", "Voxel size along X in mm."),
    ("spacing_y_mm", "sc:Float", "Voxel size along Y in mm."),
    ("spacing_z_mm", "sc:Float", "Slice spacing (Z) in mm."),
    ("frame_ms", "sc:Float", "Time between frames in ms."),
)


def _media_type(name: str) -> str:
    for suffix, media in _MEDIA_TYPES.items():
        if name.endswith(suffix):
            return media
    return "application/octet-stream"


def _file_id(rel: str) -> str:
    return "file:" + rel


def _distribution(root: Path, exclude: frozenset[str]) -> list[dict[str, Any]]:
    return [
        {
            "@type": "cr:FileObject",
            "@id": _file_id(rel),
            "name": rel,
            "contentUrl": rel,
            "contentSize": f"{(root / rel).stat().st_size} B",
            "encodingFormat": _media_type(rel),
            "sha256": sha256_file(root / rel),
        }
        for rel in list_files(root, exclude)
    ]


def _subject_record(cohort_root: Path, rel_cohort: str, subject_id: str) -> dict[str, Any]:
    folder = cohort_root / subject_id
    meta_path = folder / META_FILE
    meta = read_json_object(meta_path, "subject meta") if meta_path.is_file() else {}
    image = nib.load(str(folder / CINE_FILE))  # header only; the voxels are not read
    if not isinstance(image, nib.Nifti1Image):
        raise InputError(f"{folder / CINE_FILE}: not a NIfTI-1 image")
    shape, zooms = image.shape, image.header.get_zooms()
    has_labels = (folder / LABELS_FILE).is_file()
    values: dict[str, Any] = {
        "subject_id": subject_id,
        "cine": f"{rel_cohort}/{subject_id}/{CINE_FILE}",
        "labels": f"{rel_cohort}/{subject_id}/{LABELS_FILE}" if has_labels else "",
        "ed_frame": int(meta.get("ed_frame", -1)),
        "es_frame": int(meta.get("es_frame", -1)),
        "ef": round(float(meta["ef"]), 4) if isinstance(meta.get("ef"), int | float) else -1.0,
        "frames": int(shape[3]) if len(shape) > 3 else 1,
        "spacing_x_mm": round(float(zooms[0]), 6),
        "spacing_y_mm": round(float(zooms[1]), 6),
        "spacing_z_mm": round(float(zooms[2]), 6),
        "frame_ms": round(float(zooms[3]), 6) if len(zooms) > 3 else 0.0,
    }
    return {f"subjects/{name}": values[name] for name, _, _ in SUBJECT_FIELDS}


def _record_set(root: Path, rel_cohort: str) -> dict[str, Any]:
    cohort_root = root / rel_cohort
    index = read_json_object(cohort_root / COHORT_INDEX, "cohort index")
    return {
        "@type": "cr:RecordSet",
        "@id": "subjects",
        "name": "subjects",
        "description": "One record per synthetic subject of cohort/.",
        "key": {"@id": "subjects/subject_id"},
        "field": [
            {
                "@type": "cr:Field",
                "@id": f"subjects/{name}",
                "name": name,
                "description": text,
                "dataType": data_type,
            }
            for name, data_type, text in SUBJECT_FIELDS
        ],
        "data": [_subject_record(cohort_root, rel_cohort, s) for s in index["subjects"]],
    }


def _privacy_sites(provenance: dict[str, Any]) -> Any:
    """Per-site (epsilon, delta, accountant) where the provenance records them, else None."""
    privacy = provenance.get("privacy")
    if isinstance(privacy, dict) and privacy.get("sites"):
        return privacy["sites"]
    sampled = provenance.get("cohort", {}).get("provenance", {})
    for key in ("privacy_per_site", "privacy"):
        if sampled.get(key):
            return sampled[key]
    return None


def _audit_summary(audit: dict[str, Any]) -> dict[str, Any]:
    keys = ("passed", "threshold", "n_synthetic", "dcr_share", "dcr_expected", "dcr_p_value")
    summary = {k: audit[k] for k in keys if k in audit}
    summary["n_flagged"] = len(audit.get("flagged", []))
    membership = audit.get("membership")
    if isinstance(membership, dict):
        summary["membership"] = {
            k: membership[k]
            for k in ("auc", "tpr_at_1pct_fpr", "n_members", "n_nonmembers")
            if k in membership
        }
    method = audit.get("method")
    if isinstance(method, dict) and "name" in method:
        summary["method"] = method["name"]
    return summary


def _privacy_sentence(sites: Any, audit: dict[str, Any]) -> str:
    verdict = "passed" if audit.get("passed") is True else "did not pass"
    text = (
        "Synthetic data: no record is a real patient. The generator was trained on real cine "
        "CMR that never left the contributing sites; the memorization audit (nearest-neighbour "
        f"distances to each site's training and held-out subjects) {verdict} "
        f"({len(audit.get('flagged', []))} of {audit.get('n_synthetic', '?')} synthetic subjects "
        "flagged)."
    )
    if sites:
        text += " Differential privacy spent per site: " + json.dumps(sites, sort_keys=True) + "."
    else:
        text += " No differential-privacy guarantee is recorded for this release."
    return text


def build_croissant(
    root: str | Path,
    provenance: dict[str, Any],
    audit: dict[str, Any],
    *,
    cohort_dir: str = "cohort",
    name: str = "fedcmr4d-synthetic-cine-cmr",
    license_url: str = DEFAULT_LICENSE,
    exclude: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The Croissant JSON-LD of the release folder ``root`` (files already in place).

    Args:
        root: the release folder being built.
        provenance: the release's ``provenance.json`` content.
        audit: its ``audit.json`` content.
        cohort_dir: the cohort's folder inside ``root``.
        name: the dataset name.
        license_url: the data licence (a URL; default CC BY 4.0).
        exclude: files of ``root`` (relative, POSIX) not to list, e.g. the manifest.
    """
    root = Path(root)
    sampled = provenance.get("cohort", {}).get("provenance", {})
    sites = _privacy_sites(provenance)
    n_subjects = provenance.get("cohort", {}).get("n_subjects", "?")
    how = (
        "Sampled from a latent diffusion model over the latents of a spatiotemporal VQ-VAE "
        "(fedcmr4d), both trained by federated learning across hospital sites"
        + (" with DP-SGD at every site" if sites else "")
        + f"; config {sampled.get('config_name', '?')}, sampler {sampled.get('sampler', '?')} "
        f"with {sampled.get('sample_steps', '?')} steps, seed {sampled.get('seed', '?')}, "
        f"checkpoint SHA-256 {sampled.get('checkpoint_sha256', '?')}."
    )
    document = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": name,
        "description": (
            f"{n_subjects} synthetic 4D (3D + time) short-axis cine cardiac MRI subjects with "
            "their metadata, released with a memorization audit and a signed manifest."
        ),
        "conformsTo": CONFORMS_TO,
        "license": license_url,
        "version": "1.0.0",
        "datePublished": str(provenance.get("release", {}).get("created_utc", ""))[:10] or None,
        "creator": {
            "@type": "sc:Organization",
            "name": f"data steward, signing key {provenance.get('release', {}).get('signer', '?')}",
        },
        "citeAs": "fedcmr4d synthetic cine CMR release (see DATASHEET.md)",
        "keywords": ["cardiac MRI", "cine", "synthetic data", "federated learning"],
        "isLiveDataset": False,
        "rai:hasSyntheticData": True,
        "rai:dataCollection": how,
        "rai:dataCollectionType": ["Synthetic data", "Software Collection"],
        "rai:dataCollectionRawData": (
            "Real cine CMR at the training sites; it never left them and is not in this release."
        ),
        "rai:personalSensitiveInformation": [_privacy_sentence(sites, audit)],
        "rai:dataUseCases": [
            "Method development, augmentation and benchmarking of cardiac image analysis."
        ],
        "rai:dataLimitations": [
            "Synthetic images may miss rare anatomy and pathology of the training population; "
            "not for clinical decisions."
        ],
        "rai:dataReleaseMaintenancePlan": (
            "Each release is immutable and signed; a new model gives a new release."
        ),
        "prov:wasGeneratedBy": {"@type": "prov:Activity", "description": how},
        "fedcmr4d:audit": json.dumps(_audit_summary(audit), sort_keys=True),
        "fedcmr4d:privacy": json.dumps(sites, sort_keys=True) if sites else None,
        "distribution": _distribution(root, exclude | {CROISSANT_FILE}),
        "recordSet": [_record_set(root, cohort_dir)],
    }
    return _without_none(document)


def _without_none(node: Any) -> Any:
    """Drop ``None`` values (JSON-LD has no null property)."""
    if isinstance(node, dict):
        return {k: _without_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_none(v) for v in node]
    return node
