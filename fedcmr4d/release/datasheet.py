"""``DATASHEET.md`` of a release: what the data are, where they came from, how they were checked.

Written from ``provenance.json`` and ``audit.json`` only. The cohort provenance is whatever the
sampler recorded in ``cohort.json`` (checkpoint SHA-256, config, seed, epsilon per site); well
known keys are pulled out into a summary and the whole record is reproduced verbatim.
"""

from __future__ import annotations

import json
from typing import Any

from fedcmr4d.audit.report import format_p_value

_SUMMARY_KEYS = (
    ("checkpoint_sha256", "Checkpoint SHA-256"),
    ("checkpoint", "Checkpoint"),
    ("autoencoder_sha256", "Autoencoder SHA-256"),
    ("config_name", "Config"),
    ("seed", "Sampling seed"),
    ("epsilon", "Privacy epsilon"),
    ("delta", "Privacy delta"),
    ("epsilon_per_site", "Epsilon per site"),
    ("sites", "Sites"),
    ("source", "Source"),
)


def _summary(provenance: dict[str, Any]) -> list[str]:
    lines = []
    for key, label in _SUMMARY_KEYS:
        if key in provenance:
            value = provenance[key]
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
            lines.append(f"| {label} | `{shown}` |")
    return lines


def render_datasheet(provenance: dict[str, Any], audit: dict[str, Any]) -> str:
    """Markdown datasheet for a release."""
    cohort = provenance["cohort"]
    summary = provenance["audit"]
    release = provenance["release"]
    sites = (
        ", ".join(
            f"{s['site']} ({s['n_train']} train / {s['n_holdout']} holdout)"
            for s in summary["sites"]
        )
        or "n/a"
    )
    rows = _summary(cohort["provenance"]) or ["| (none recorded) | |"]
    method = audit.get("method", {})
    grid = method.get("grid", {})
    return "\n".join(
        [
            "# Datasheet: fedcmr4d synthetic 4D cine CMR cohort",
            "",
            "## What this is",
            f"{cohort['n_subjects']} synthetic short-axis cine cardiac MRI subjects, sampled "
            "from a generative model (fedcmr4d: VQ-VAE + latent diffusion). No subject is a "
            "real patient. Format: one folder per subject under `cohort/` with "
            "`cine.nii.gz` (X x Y x Z x T, float32 in [0, 1]) and `meta.json`; spacing "
            f"{cohort['spacing_mm']} mm, {cohort['frames']} frames per cycle.",
            "",
            "## Provenance",
            "| field | value |",
            "|---|---|",
            *rows,
            "",
            "Full provenance record from `cohort/cohort.json`:",
            "",
            "```json",
            json.dumps(cohort["provenance"], indent=2, sort_keys=True),
            "```",
            "",
            "## Memorization audit",
            f"- Result: **{'passed' if summary['passed'] else 'FAILED'}**; method "
            f"`{summary['method']}` (1 - max normalised cross-correlation over cyclic frame "
            f"shifts and in-plane shifts up to {grid.get('max_shift', '?')} voxels).",
            f"- Threshold {summary['threshold']:.6f}: the {method.get('percentile', '?')} "
            "percentile of real holdout-to-train nearest distances, computed at the sites.",
            f"- Flagged synthetic subjects: {summary['n_flagged']} of {summary['n_synthetic']}.",
            f"- DCR share {summary['dcr_share']:.3f} (expected without memorization "
            f"{summary['dcr_expected']:.3f}, tolerance {method.get('dcr_tolerance', '?')}; "
            f"binomial p-value {format_p_value(summary.get('dcr_p_value'))}, fails below "
            f"{method.get('dcr_alpha', '?')}).",
            f"- Sites: {sites}.",
            f"- `audit.json` SHA-256 `{summary['sha256']}`; histograms in `audit.html`.",
            "",
            "## Intended use and limits",
            "- Method development, teaching and benchmarking where real patient images cannot be "
            "shared. Not for clinical decisions.",
            "- The audit finds near-copies of training subjects under noise, small shifts, "
            "intensity changes and phase shifts; it does not prove that no information about a "
            "patient is present. Differential privacy, where used, is the formal guarantee "
            "(see epsilon above).",
            "",
            "## Verify before use",
            "```",
            "fedcmr4d verify <this folder> --public-key signing.pub",
            "```",
            "Exit 0 means the signature over `manifest.json` is valid for that key and every file "
            "matches its SHA-256; exit 5 names the first bad file.",
            "",
            f"Released {release['created_utc']} with fedcmr4d {release['fedcmr4d_version']}; "
            f"signer key `{release['signer']}`.",
            "",
        ]
    )
