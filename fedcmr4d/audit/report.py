"""HTML audit report, built from the public ``audit.json`` alone.

The report sees only what ``audit.json`` holds (verdict, thresholds, counts, p-values, flagged
synthetic ids, membership figures, method), so neither a real image nor a real subject's
distance can end up in it; it may travel with a release.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fedcmr4d.io import atomic_write_text


def format_p_value(value: float | None) -> str:
    """A p-value for people: 3 significant digits; "not computed" when absent."""
    return "not computed" if value is None else f"{value:.3g}"


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def render_report(audit: dict[str, Any]) -> str:
    """The report as one HTML string."""
    esc = html.escape
    verdict = "PASSED" if audit["passed"] else "FAILED"
    colour = "#1a7f37" if audit["passed"] else "#cf222e"
    reasons = "".join(f"<li>{esc(r)}</li>" for r in audit.get("reasons", [])) or "<li>none</li>"
    warnings = "".join(f"<li>{esc(w)}</li>" for w in audit.get("warnings", [])) or "<li>none</li>"
    flagged = (
        "".join(
            f"<tr><td>{esc(f['synthetic_id'])}</td><td>{esc(f['site'])}</td></tr>"
            for f in audit["flagged"]
        )
        or "<tr><td colspan=2>none</td></tr>"
    )
    membership = audit.get("membership")
    if membership:
        member_text = (
            f"<p>Stage {esc(str(membership['stage']))}: AUC {membership['auc']:.3f}, TPR at 1 % "
            f"FPR {membership['tpr_at_1pct_fpr']:.3f}, {membership['n_members']} members / "
            f"{membership['n_nonmembers']} non-members, one-sided Mann-Whitney p "
            f"{format_p_value(membership['p_value'])} (fails below {membership['alpha']} / "
            "stages).</p>"
        )
    else:
        member_text = "<p>Not run (no model given to the audit).</p>"
    method = audit["method"]
    grid = ", ".join(f"{esc(str(k))}={esc(str(v))}" for k, v in method["grid"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fedcmr4d memorization audit</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:2px 8px}}table{{border-collapse:collapse}}</style></head>
<body>
<h1>Memorization audit: <span style="color:{colour}">{verdict}</span></h1>
<p>{audit["n_synthetic"]} synthetic subjects audited at {audit["n_sites"]} site(s)
({audit["n_train"]} training / {audit["n_holdout"]} holdout subjects in all); strictest copy
threshold {_number(audit["threshold"])}; DCR share {audit["dcr_share"]:.3f} (expected without
memorization {audit["dcr_expected"]:.3f}, tolerance {method["dcr_tolerance"]}; p-value
{format_p_value(audit.get("dcr_p_value"))}, an excess fails below {method["dcr_alpha"]}).</p>
<h2>Reasons for failure</h2><ul>{reasons}</ul>
<h2>Warnings</h2><ul>{warnings}</ul>
<h2>Flagged synthetic subjects</h2>
<table><tr><th>synthetic id</th><th>site</th></tr>{flagged}</table>
<h2>Membership inference</h2>{member_text}
<h2>Method</h2>
<p>{esc(method["name"])}: {esc(method["distance"])}. Grid: {grid}.</p>
<p>Threshold: {esc(method["threshold_rule"])}. Flag: {esc(method["flag_rule"])}.
Pass: {esc(method["pass_rule"])}.</p>
<p>Sites sent only per-synthetic-subject bits, thresholds, counts and rank statistics; no
image and no distance of a real subject is in this report.</p>
</body></html>
"""


def write_report(audit: dict[str, Any], path: str | Path) -> Path:
    """Write the HTML report atomically and return its path."""
    path = Path(path)
    atomic_write_text(path, render_report(audit))
    return path
