"""``DATASHEET.md`` of a release: what the data are, where they came from, how they were checked.

Written from ``provenance.json`` and the public ``audit.json`` only. The cohort provenance is
what the sampler recorded in ``cohort.json`` (checkpoint name and SHA-256, config, seed), with
absolute paths already reduced to names; each site's (epsilon, delta, accountant) per stage is a
table of its own; well known keys are pulled out into a summary and the whole record is
reproduced verbatim.
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
    ("source", "Source"),
)


def _privacy_table(sites: dict[str, Any]) -> list[str]:
    if not sites:
        return ["No differential privacy recorded: the model was trained without DP-SGD."]
    rows = ["| site | stage | epsilon | delta | accountant |", "|---|---|---|---|---|"]
    for site in sorted(sites):
        for stage in sorted(sites[site]):
            entry = sites[site][stage]

            def show(value: Any) -> str:
                return f"{value:.4g}" if isinstance(value, int | float) else str(value)

            rows.append(
                f"| {site} | {stage} | {show(entry.get('epsilon'))} | "
                f"{show(entry.get('delta'))} | {show(entry.get('accountant'))} |"
            )
    return rows


def _membership_line(membership: dict[str, Any] | None) -> str:
    if not membership:
        return "- Membership inference: not run (the audit was given no model)."
    return (
        f"- Membership inference on the model's loss: AUC {membership['auc']:.3f}, TPR at 1 % "
        f"FPR {membership['tpr_at_1pct_fpr']:.3f} ({membership['n_members']} training vs "
        f"{membership['n_nonmembers']} holdout subjects; one-sided Mann-Whitney p "
        f"{format_p_value(membership.get('p_value'))})."
    )


def _summary(provenance: dict[str, Any]) -> list[str]:
    lines = []
    for key, label in _SUMMARY_KEYS:
        if key in provenance:
            value = provenance[key]
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
            lines.append(f"| {label} | `{shown}` |")
    return lines


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _labels_lines(cohort_provenance: dict[str, Any]) -> list[str]:
    labels = cohort_provenance.get("labels")
    if not isinstance(labels, dict):
        return ["No label maps: the cines come without `labels.nii.gz`."]
    return [
        f"{labels.get('n_labelled', '?')} subjects carry `labels.nii.gz` (every frame: 0 "
        "background, 1 LV cavity, 2 LV myocardium, 3 RV) made by the evaluation segmenter "
        f"(weights SHA-256 `{labels.get('segmenter_sha256', '?')}`, trained on "
        f"{labels.get('segmenter_train_subjects', '?')} real subjects, DP: "
        f"{labels.get('segmenter_dp', False)}); `meta.json` holds `ed_frame`, `es_frame` and "
        "`ef` (%) from those labels' LV volume curve. They are model output, not expert "
        "contours: docs/evaluation.md gives their measured agreement with ground truth.",
    ]


def render_datasheet(provenance: dict[str, Any], audit: dict[str, Any]) -> str:
    """Markdown datasheet for a release."""
    cohort = provenance["cohort"]
    summary = provenance["audit"]
    release = provenance["release"]
    sites = ", ".join(summary.get("site_names") or []) or "n/a"
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
            "## Labels",
            *_labels_lines(cohort["provenance"]),
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
            "## Differential privacy per site",
            *_privacy_table(provenance.get("privacy", {}).get("sites", {})),
            "",
            "## Memorization audit",
            f"- Result: **{'passed' if summary['passed'] else 'FAILED'}**; method "
            f"`{summary['method']}` (1 - max normalised cross-correlation over cyclic frame "
            f"shifts, in-plane shifts up to {grid.get('max_shift', '?')} voxels, flips and "
            "rotations, all slices).",
            f"- Strictest copy threshold {_fmt(summary['threshold'])}: computed at each site "
            "from its own holdout and training subjects (a Weibull tail with a false-alarm rate of "
            f"{method.get('copy_alpha', '?')} for the whole cohort).",
            f"- Flagged synthetic subjects: {summary['n_flagged']} of {summary['n_synthetic']}.",
            f"- DCR share {summary['dcr_share']:.3f} (expected without memorization "
            f"{summary['dcr_expected']:.3f}, tolerance {method.get('dcr_tolerance', '?')}; "
            f"binomial p-value {format_p_value(summary.get('dcr_p_value'))}, fails below "
            f"{method.get('dcr_alpha', '?')}).",
            _membership_line(summary.get("membership")),
            f"- Sites: {sites}.",
            f"- `audit.json` SHA-256 `{summary['sha256']}`; histograms in `audit.html`.",
            "",
            "## Intended use and limits",
            "- Method development, teaching and benchmarking where real patient images cannot be "
            "shared. Not for clinical decisions.",
            "- The audit finds near-copies of training subjects under noise, small shifts, "
            "intensity changes and phase shifts; it does not prove that no information about a "
            "patient is present. Differential privacy, where used, is the formal guarantee "
            "(see the table above).",
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
