"""Pictures and the self-contained ``report.html`` of an evaluation.

Every figure is rendered to PNG (matplotlib, Agg) or GIF (Pillow, which matplotlib depends on)
bytes, written next to the report under ``plots/`` and embedded in ``report.html`` as base64, so
the HTML file alone shows everything (mail it, open it offline).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fedcmr4d.io import atomic_write_bytes, atomic_write_text  # noqa: E402

REAL_COLOUR, SYNTH_COLOUR = "#1f77b4", "#d62728"


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def plot_fid_depth(fid: Sequence[float], real_real: Sequence[float] | None) -> bytes:
    """FID per slice position (0 = base), synthetic vs real and the real-real baseline."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    depth = np.arange(len(fid))
    ax.plot(depth, fid, "o-", color=SYNTH_COLOUR, label="synthetic vs real")
    if real_real is not None:
        ax.plot(depth, real_real, "s--", color=REAL_COLOUR, label="real vs real (split)")
    ax.set_xlabel("slice position z")
    ax.set_ylabel("FID")
    ax.set_xticks(depth)
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("FID across depth")
    return _png(fig)


def plot_volume_curves(
    real: Mapping[str, np.ndarray], synthetic: Mapping[str, np.ndarray]
) -> bytes:
    """LV volume over the cycle: one thin line per subject, the mean thick; x is cycle phase."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for curves, colour, name in (
        (real, REAL_COLOUR, "real"),
        (synthetic, SYNTH_COLOUR, "synthetic"),
    ):
        if not curves:
            continue
        stack = []
        for curve in curves.values():
            phase = np.arange(len(curve)) / len(curve)
            ax.plot(phase, curve, color=colour, alpha=0.2, linewidth=0.8)
            stack.append(np.interp(np.linspace(0, 1, 32, endpoint=False), phase, curve, period=1.0))
        grid = np.linspace(0, 1, 32, endpoint=False)
        ax.plot(grid, np.mean(stack, axis=0), color=colour, linewidth=2.5, label=f"{name} mean")
    ax.set_xlabel("cycle phase (frame / frames)")
    ax.set_ylabel("LV volume (ml)")
    ax.legend()
    ax.set_title("LV volume curves (segmenter)")
    return _png(fig)


def plot_ef_histograms(real: Sequence[float], synthetic: Sequence[float]) -> bytes:
    """Overlaid EF histograms on shared bins."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    values = [v for v in (*real, *synthetic) if np.isfinite(v)]
    bins = np.linspace(min(values, default=0) - 1, max(values, default=100) + 1, 16).tolist()
    for data, colour, name in ((real, REAL_COLOUR, "real"), (synthetic, SYNTH_COLOUR, "synthetic")):
        finite = [v for v in data if np.isfinite(v)]
        if finite:
            ax.hist(finite, bins=bins, alpha=0.5, color=colour, label=f"{name} (n={len(finite)})")
    ax.set_xlabel("ejection fraction (%)")
    ax.set_ylabel("subjects")
    ax.legend()
    ax.set_title("EF distributions")
    return _png(fig)


def plot_montage(slices: Mapping[str, np.ndarray], title: str, columns: int = 8) -> bytes:
    """Rows of subjects, columns of frames over the cycle, of each subject's mid slice.

    Args:
        slices: subject id -> (X, Y, T) mid-slice cine.
    """
    rows = max(len(slices), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.15), squeeze=False)
    for r, (subject_id, cine) in enumerate(slices.items()):
        frames = np.linspace(0, cine.shape[-1] - 1, columns).round().astype(int)
        for c, t in enumerate(frames):
            ax = axes[r, c]
            ax.imshow(cine[:, :, t].T, cmap="gray", vmin=0, vmax=1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(subject_id, fontsize=7)
            if r == 0:
                ax.set_title(f"t={t}", fontsize=7)
    for ax in axes.ravel()[len(slices) * columns :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def cine_gif(cine: np.ndarray, frame_ms: float, tile: int = 128) -> bytes:
    """Animated GIF of a cine: every slice side by side, one GIF frame per cine frame.

    Args:
        cine: (X, Y, Z, T) in [0, 1].
        frame_ms: display time per frame (clamped to 20..200 ms).
        tile: about how many pixels each slice gets (small cines are magnified by whole
            factors, large ones subsampled, so a 384 x 384 cohort does not make 10 MB GIFs).
    """
    step = max(1, -(-max(cine.shape[:2]) // tile))
    cine = cine[::step, ::step]
    x, y, z, t = cine.shape
    scale = max(1, min(4, tile // max(x, y)))
    tiles = np.clip(cine, 0, 1).transpose(3, 1, 2, 0)[:, ::-1]  # (T, Y, Z, X), y up
    strip = tiles.reshape(t, y, z * x)
    strip = np.repeat(np.repeat(strip, scale, axis=1), scale, axis=2)
    images = [Image.fromarray((frame * 255).astype(np.uint8), mode="L") for frame in strip]
    buffer = io.BytesIO()
    duration = int(min(max(frame_ms if frame_ms > 0 else 50, 20), 200))
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )
    return buffer.getvalue()


def _img(data: bytes, mime: str, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{encoded}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.4g}"
    return "n/a" if value is None else html.escape(str(value))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3;text-align:left} .grid{display:flex;flex-wrap:wrap;gap:16px}
.gif{display:inline-block;text-align:center;font-size:12px} .note{color:#555;font-size:13px}
"""


def render_html(
    metrics: Mapping[str, Any],
    figures: Mapping[str, bytes],
    gifs: Mapping[str, bytes],
) -> str:
    """The report page. ``figures``: name -> PNG bytes; ``gifs``: subject id -> GIF bytes."""
    summary = [
        ("synthetic subjects", metrics.get("n_synthetic")),
        ("real subjects", metrics.get("n_real")),
        (
            "FID across depth, mean ± sd",
            f"{_fmt(metrics.get('fid_mean'))} ± {_fmt(metrics.get('fid_std'))}",
        ),
        ("real-real FID (two halves of the real cohort), mean", metrics.get("fid_real_real_mean")),
        (
            f"synthetic-real FID at the halves' size ({metrics.get('fid_matched_subjects')} "
            "subjects a side), mean",
            metrics.get("fid_matched_mean"),
        ),
        ("FID ratio synthetic / real-real (same sizes)", metrics.get("fid_ratio")),
        ("EF W1 synthetic vs real (EF points)", metrics.get("ef_w1")),
        (
            "EF mean real / synthetic (%)",
            f"{_fmt(metrics.get('ef_real_mean'))} / {_fmt(metrics.get('ef_synthetic_mean'))}",
        ),
        (
            "EF sd real / synthetic (%), ratio",
            f"{_fmt(metrics.get('ef_real_std'))} / {_fmt(metrics.get('ef_synthetic_std'))}, "
            f"{_fmt(metrics.get('ef_std_ratio'))}",
        ),
        (
            "synthetic subjects with an LV found",
            f"{metrics.get('ef_synthetic_found')} of {metrics.get('n_synthetic')}",
        ),
        (
            "curve smoothness real / synthetic",
            f"{_fmt(metrics.get('smoothness_real_mean'))} / "
            f"{_fmt(metrics.get('smoothness_synthetic_mean'))}",
        ),
        (
            "edge sharpness real / synthetic (per mm), ratio",
            f"{_fmt(metrics.get('sharpness_real_mean'))} / "
            f"{_fmt(metrics.get('sharpness_synthetic_mean'))}, "
            f"{_fmt(metrics.get('sharpness_ratio'))}",
        ),
        ("feature network", metrics.get("feature_network", {}).get("sha256", "")[:16]),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in summary)
    gif_html = "".join(
        f'<div class="gif">{_img(data, "image/gif", sid)}<br>{html.escape(sid)}</div>'
        for sid, data in gifs.items()
    )
    fig = {name: _img(data, "image/png", name) for name, data in figures.items()}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fedcmr4d evaluation</title>
<style>{_STYLE}</style></head><body>
<h1>fedcmr4d evaluation report</h1>
<p class="note">synthetic: {html.escape(str(metrics.get("synthetic_dir", "")))}<br>
real: {html.escape(str(metrics.get("real_dir", "")))}</p>
<table>{rows}</table>
<p class="note">FID values compare only under the same feature network (same weights file,
SHA-256 above); features are per frame of each slice position. Volume curves come from the
segmenter; EF of real subjects from their ED/ES labels where they have them.</p>
<h2>Synthetic cines (all slices, base to apex)</h2><div class="grid">{gif_html}</div>
<h2>Mid-slice montages</h2>{fig.get("montage_synthetic", "")}<br>{fig.get("montage_real", "")}
<h2>FID across depth</h2>{fig.get("fid_depth", "")}
<h2>LV function</h2><div class="grid">{fig.get("volume_curves", "")}
{fig.get("ef_histograms", "")}</div>
{utility_section(metrics["utility"]) if "utility" in metrics else ""}
</body></html>
"""


def utility_section(utility: Mapping[str, Mapping[str, Any]]) -> str:
    """The train-on-synthetic table: one row per training arm, tested on held-out real."""
    columns = (
        ("dice_lv", "Dice LV"),
        ("dice_myo", "Dice myo"),
        ("dice_rv", "Dice RV"),
        ("dice_mean", "Dice mean"),
        ("dice_mean_sd", "sd over seeds"),
        ("dice_mean_vs_real", "Dice mean - (a), paired by seed"),
        ("ef_mae", "EF MAE (points)"),
        ("train_subjects", "train subjects"),
        ("train_frames", "train frames"),
        ("real_share", "share of real draws"),
    )
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name in columns)
    body = "".join(
        f"<tr><th>{html.escape(arm)}</th>"
        + "".join(f"<td>{_fmt(row.get(key))}</td>" for key, _ in columns)
        + "</tr>"
        for arm, row in utility.items()
    )
    seeds = len(next(iter(utility.values())).get("per_seed") or [None])
    above = "".join(
        f"; {html.escape(arm)} matched or beat (a) in {row['seeds_at_or_above_real']} of {seeds}"
        for arm, row in utility.items()
        if "seeds_at_or_above_real" in row
    )
    return (
        "<h2>Utility: train on real / synthetic / both, test on held-out real</h2>"
        f"<table><tr><th>trained on</th>{head}</tr>{body}</table>"
        f'<p class="note">Same segmenter, steps and seeds for every arm ({seeds} seed'
        f"{'s' if seeds != 1 else ''}: the figures are means over them{above}); Dice over "
        "the test subjects' labelled frames, EF from the predicted LV volume curve vs the "
        "reference EF.</p>"
    )


def write_utility_report(out_dir: Path, metrics: Mapping[str, Any]) -> Path:
    """``report.html`` of ``fedcmr4d utility``: the utility table and the cohort sizes."""
    sizes = (
        f"real train: {_fmt(metrics.get('n_real_train'))} subjects "
        f"({html.escape(str(metrics.get('real_train_dir', '')))}), synthetic: "
        f"{_fmt(metrics.get('n_synthetic'))} ({html.escape(str(metrics.get('synthetic_dir', '')))}"
        f"), real test: {_fmt(metrics.get('n_real_test'))} "
        f"({html.escape(str(metrics.get('real_test_dir', '')))})"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fedcmr4d utility</title>
<style>{_STYLE}</style></head><body>
<h1>fedcmr4d utility report</h1>
<p class="note">{sizes}</p>
{utility_section(metrics["utility"])}
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


def write_report(
    out_dir: Path,
    metrics: Mapping[str, Any],
    figures: Mapping[str, bytes],
    gifs: Mapping[str, bytes],
) -> Path:
    """Write ``plots/*.png``, ``plots/*.gif`` and (last) ``report.html``; returns its path."""
    for name, data in figures.items():
        atomic_write_bytes(out_dir / "plots" / f"{name}.png", data)
    for subject_id, data in gifs.items():
        atomic_write_bytes(out_dir / "plots" / f"cine_{subject_id}.gif", data)
    path = out_dir / "report.html"
    atomic_write_text(path, render_html(metrics, figures, gifs))
    return path
