"""HTML audit report: distance histograms and the flagged list, built from ``audit.json`` alone.

The report only ever sees what ``audit.json`` holds (distances, synthetic ids, counts), so no
image of a real subject can end up in it. Plots are matplotlib PNGs embedded as base64, so the
file is self-contained and opens offline.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.io import atomic_write_text


def format_p_value(value: float | None) -> str:
    """A p-value for people: 3 significant digits; "not computed" for audits older than it."""
    return "not computed" if value is None else f"{value:.3g}"


def _histogram_png(audit: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    holdout = np.asarray(audit["distances"]["holdout_to_train"], dtype=float)
    rows = audit["distances"]["synthetic"]
    to_train = np.asarray([r["nearest_train"] for r in rows if r["nearest_train"] is not None])
    to_holdout = np.asarray(
        [r["nearest_holdout"] for r in rows if r["nearest_holdout"] is not None]
    )
    values = np.concatenate([holdout, to_train, to_holdout]) if rows else holdout
    top = float(values.max()) if values.size else 1.0
    bins = np.linspace(0.0, max(top, audit["threshold"]) * 1.05 + 1e-9, 40).tolist()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    ax.hist(holdout, bins=bins, alpha=0.55, label="holdout -> train (real, sets the bar)")
    ax.hist(to_train, bins=bins, alpha=0.55, label="synthetic -> train")
    ax.hist(to_holdout, bins=bins, alpha=0.4, histtype="step", lw=2, label="synthetic -> holdout")
    ax.axvline(audit["threshold"], color="red", ls="--", label="threshold")
    ax.set_xlabel("nearest-neighbour distance (1 - max NCC)")
    ax.set_ylabel("subjects")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_report(audit: dict[str, Any]) -> str:
    """The report as one HTML string."""
    esc = html.escape
    verdict = "PASSED" if audit["passed"] else "FAILED"
    colour = "#1a7f37" if audit["passed"] else "#cf222e"
    reasons = "".join(f"<li>{esc(r)}</li>" for r in audit.get("reasons", [])) or "<li>none</li>"
    warnings = "".join(f"<li>{esc(w)}</li>" for w in audit.get("warnings", [])) or "<li>none</li>"
    sites = "".join(
        f"<tr><td>{esc(s['site'])}</td><td>{s['n_train']}</td><td>{s['n_holdout']}</td></tr>"
        for s in audit["sites"]
    )
    flagged = (
        "".join(
            f"<tr><td>{esc(f['synthetic_id'])}</td><td>{f['distance']:.6f}</td>"
            f"<td>{esc(f['site'])}</td></tr>"
            for f in audit["flagged"]
        )
        or "<tr><td colspan=3>none</td></tr>"
    )
    method = audit["method"]
    grid = ", ".join(f"{esc(str(k))}={esc(str(v))}" for k, v in method["grid"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fedcmr4d memorization audit</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{border:1px solid #ccc;padding:2px 8px}}table{{border-collapse:collapse}}</style></head>
<body>
<h1>Memorization audit: <span style="color:{colour}">{verdict}</span></h1>
<p>{audit["n_synthetic"]} synthetic subjects; threshold {audit["threshold"]:.6f}
(the {method["percentile"]} percentile of real holdout-to-train nearest distances);
DCR share {audit["dcr_share"]:.3f} (expected without memorization {audit["dcr_expected"]:.3f},
tolerance {method["dcr_tolerance"]}; binomial p-value {format_p_value(audit.get("dcr_p_value"))},
an excess fails below {method.get("dcr_alpha", "?")}).</p>
<h2>Reasons for failure</h2><ul>{reasons}</ul>
<h2>Warnings</h2><ul>{warnings}</ul>
<h2>Distances</h2>
<img alt="nearest-neighbour distance histograms"
 src="data:image/png;base64,{_histogram_png(audit)}">
<h2>Flagged synthetic subjects</h2>
<table><tr><th>synthetic id</th><th>distance</th><th>site</th></tr>{flagged}</table>
<h2>Sites</h2>
<table><tr><th>site</th><th>train</th><th>holdout</th></tr>{sites}</table>
<h2>Method</h2>
<p>{esc(method["name"])}: {esc(method["distance"])}. Grid: {grid}.</p>
<p>Threshold: {esc(method["threshold_rule"])}. Flag: {esc(method["flag_rule"])}.
Pass: {esc(method["pass_rule"])}.</p>
<p>Only distances, synthetic ids and counts were used; no image of a real subject is in this
report.</p>
</body></html>
"""


def write_report(audit: dict[str, Any], path: str | Path) -> Path:
    """Write the HTML report atomically and return its path."""
    path = Path(path)
    atomic_write_text(path, render_report(audit))
    return path
