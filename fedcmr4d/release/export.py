"""Build a signed release from an audited synthetic cohort.

Layout (DESIGN.md)::

    release/
      cohort/          exact copy of the audited synthetic cohort
      audit.json       the public audit, byte for byte (audit.html too when it sits beside it):
                       verdict, thresholds, counts, p-values, membership figures, method -- no
                       real-subject distance or id (``audit-full.json`` stays with the steward)
      provenance.json  the cohort's provenance (checkpoint name and hash, config, seed),
                       ``privacy.sites`` (each site's epsilon, delta, accountant per stage), audit
                       summary, signer fingerprint, tool version; names, never absolute paths
      DATASHEET.md     the same for humans, plus intended use and how to verify
      croissant.json   Croissant 1.1 JSON-LD: files, subject records, RAI fields (croissant.py)
      manifest.json    SHA-256 of every other file (canonical JSON)
      manifest.sig     raw 64-byte Ed25519 signature of the exact bytes of manifest.json

A release is refused (:class:`AuditFailedError`, exit 4) when the audit did not pass or when the
cohort's files differ from the hashes the audit recorded. It is assembled in a hidden temporary
folder next to ``out`` and renamed into place only when complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from fedcmr4d import __version__
from fedcmr4d.data.cohort import COHORT_INDEX
from fedcmr4d.errors import AuditFailedError, ConfigError, InputError
from fedcmr4d.io import (
    atomic_write_json,
    atomic_write_text,
    read_json_object,
    sha256_file,
    tree_hashes,
)
from fedcmr4d.release.croissant import CROISSANT_FILE, build_croissant
from fedcmr4d.release.datasheet import render_datasheet
from fedcmr4d.release.manifest import MANIFEST_FILE, SIGNATURE_FILE, build_manifest
from fedcmr4d.release.sign import fingerprint, load_private_key, sign_bytes

COHORT_DIR = "cohort"
AUDIT_FILE = "audit.json"
AUDIT_REPORT_FILE = "audit.html"
PROVENANCE_FILE = "provenance.json"
DATASHEET_FILE = "DATASHEET.md"
_REQUIRED_AUDIT_KEYS = ("passed", "threshold", "n_synthetic", "flagged", "dcr_share", "files")
#: Keys only the steward's full audit (or an audit from before the public form) has.
_PRIVATE_AUDIT_KEYS = ("site_details", "site_answers", "distances", "sites")


def read_audit(path: str | Path) -> dict[str, Any]:
    """Read and shape-check an ``audit.json``; raises :class:`InputError` naming the problem."""
    path = Path(path)
    audit = read_json_object(path, "audit")
    missing = [k for k in _REQUIRED_AUDIT_KEYS if k not in audit]
    if missing:
        raise InputError(f"{path}: not an audit.json (missing {', '.join(missing)})")
    private = [k for k in _PRIVATE_AUDIT_KEYS if k in audit]
    if private:
        raise AuditFailedError(
            f"{path}: holds {', '.join(private)} (real-subject distances or per-site detail): "
            "that is the steward's full audit; release the public audit.json beside it, or "
            "re-run `fedcmr4d audit` (release refused)"
        )
    return audit


def check_audit_matches(audit: dict[str, Any], audit_path: Path, cohort_dir: Path) -> None:
    """Refuse (exit 4) a failed audit, or one whose file hashes differ from ``cohort_dir``."""
    if audit["passed"] is not True:
        reasons = "; ".join(audit.get("reasons", [])) or "passed is not true"
        raise AuditFailedError(f"{audit_path}: the audit failed ({reasons}); release refused")
    audited: dict[str, str] = audit["files"]
    current = tree_hashes(cohort_dir)
    for rel in sorted(set(audited) | set(current)):
        if rel not in current:
            problem = "was audited but is missing now"
        elif rel not in audited:
            problem = "was added after the audit"
        elif current[rel] != audited[rel]:
            problem = "changed after the audit (SHA-256 differs)"
        else:
            continue
        raise AuditFailedError(
            f"{cohort_dir / rel}: {problem}; re-run the audit on this cohort (release refused)"
        )


def _read_index(cohort_dir: Path) -> dict[str, Any]:
    path = cohort_dir / COHORT_INDEX
    index = read_json_object(path, "cohort index")
    if "subjects" not in index:
        raise InputError(f"{path}: not a cohort index (no 'subjects')")
    return index


def _relative(value: Any) -> Any:
    """Absolute paths of the sampling machine become their last component (recursively)."""
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    if isinstance(value, str) and (value.startswith("/") or value[1:3] in (":\\", ":/")):
        return Path(value).name
    return value


def _absolute_paths(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return [value] if isinstance(value, str) and _relative(value) != value else []


def _provenance(
    index: dict[str, Any], audit: dict[str, Any], audit_sha: str, signer: str, created: str
) -> dict[str, Any]:
    cohort_provenance = _relative(index.get("provenance", {}))
    privacy = cohort_provenance.get("privacy")
    sites = privacy.get("sites", {}) if isinstance(privacy, dict) else {}
    membership = audit.get("membership") or None
    return {
        "cohort": {
            "n_subjects": len(index["subjects"]),
            "spacing_mm": index.get("spacing_mm"),
            "frames": index.get("frames"),
            "provenance": cohort_provenance,
        },
        "privacy": {"sites": sites},
        "audit": {
            "passed": audit["passed"],
            "threshold": audit["threshold"],
            "n_synthetic": audit["n_synthetic"],
            "n_flagged": len(audit["flagged"]),
            "dcr_share": audit["dcr_share"],
            "dcr_expected": audit.get("dcr_expected"),
            "dcr_p_value": audit.get("dcr_p_value"),
            "membership": None
            if membership is None
            else {
                k: membership.get(k)
                for k in ("auc", "tpr_at_1pct_fpr", "n_members", "n_nonmembers", "p_value")
            },
            "method": audit.get("method", {}).get("name"),
            "n_sites": audit.get("n_sites"),
            "site_names": audit.get("site_names", []),
            "sha256": audit_sha,
        },
        "release": {"created_utc": created, "fedcmr4d_version": __version__, "signer": signer},
    }


def build_release(
    synthetic_dir: str | Path,
    audit_path: str | Path,
    key_path: str | Path,
    out_dir: str | Path,
    *,
    passphrase: str | None = None,
) -> Path:
    """Copy, document, hash and sign an audited synthetic cohort into ``out_dir``.

    Args:
        synthetic_dir: the synthetic cohort that was audited.
        audit_path: its ``audit.json``.
        key_path: Ed25519 ``signing.key`` (PKCS#8 PEM).
        out_dir: the release folder to create; must not exist.
        passphrase: the key's passphrase (``None`` for an unencrypted key).

    Returns:
        ``out_dir``.

    Raises:
        AuditFailedError: the audit failed or does not match the cohort (exit 4).
        ConfigError: ``out_dir`` exists.
        InputError: unreadable cohort, audit or key.
    """
    cohort_dir, audit_path, out = Path(synthetic_dir), Path(audit_path), Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out}: already exists; refusing to overwrite a release")
    if out.resolve().is_relative_to(cohort_dir.resolve()):
        raise ConfigError(f"{out}: inside the cohort {cohort_dir}; put the release elsewhere")
    audit = read_audit(audit_path)
    check_audit_matches(audit, audit_path, cohort_dir)
    index = _read_index(cohort_dir)
    absolute = _absolute_paths(index.get("provenance", {}))
    if absolute:
        raise InputError(
            f"{cohort_dir / COHORT_INDEX}: provenance names paths of the sampling machine "
            f"({', '.join(absolute[:3])}); a release carries names and hashes only: re-sample "
            "with this version of fedcmr4d (release refused)"
        )
    key = load_private_key(key_path, passphrase)
    signer = fingerprint(key.public_key())
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        shutil.copytree(cohort_dir, tmp / COHORT_DIR, symlinks=True)
        if tree_hashes(tmp / COHORT_DIR) != audit["files"]:
            raise AuditFailedError(f"{cohort_dir}: changed while being copied; release refused")
        shutil.copyfile(audit_path, tmp / AUDIT_FILE)
        report = audit_path.with_name(audit_path.stem + ".html")
        if report.is_file():
            shutil.copyfile(report, tmp / AUDIT_REPORT_FILE)
        provenance = _provenance(index, audit, sha256_file(audit_path), signer, created)
        atomic_write_json(tmp / PROVENANCE_FILE, provenance)
        atomic_write_text(tmp / DATASHEET_FILE, render_datasheet(provenance, audit))
        croissant = build_croissant(tmp, provenance, audit, cohort_dir=COHORT_DIR)
        atomic_write_json(tmp / CROISSANT_FILE, croissant)
        manifest = build_manifest(tmp, signer, created)
        (tmp / MANIFEST_FILE).write_bytes(manifest)
        (tmp / SIGNATURE_FILE).write_bytes(sign_bytes(key, manifest))
        if out.exists():
            raise ConfigError(f"{out}: appeared while the release was being built")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
