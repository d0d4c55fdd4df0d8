"""Learning curves: ``curves.csv`` (one row per logged step) and ``curves.png``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fedcmr4d.io import atomic_write, atomic_write_text

CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"


def read_curves(out_dir: str | Path) -> list[dict[str, float]]:
    """Rows of an existing ``curves.csv`` (for ``--resume``); [] when absent."""
    path = Path(out_dir) / CURVES_CSV
    if not path.is_file():
        return []
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def write_curves(out_dir: str | Path, rows: list[dict[str, float]]) -> Path:
    """Write ``curves.csv`` (columns: step, then every metric seen) atomically."""
    columns = ["step"] + sorted({k for row in rows for k in row if k != "step"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if k in row else "") for k in columns})
    path = Path(out_dir) / CURVES_CSV
    atomic_write_text(path, buffer.getvalue())
    return path


def plot_curves(out_dir: str | Path, rows: list[dict[str, float]], title: str) -> Path | None:
    """One panel per metric against step; ``None`` when there is nothing to plot."""
    metrics = sorted({k for row in rows for k in row if k not in ("step", "num-examples")})
    if not rows or not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(metrics))
    nrows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, metrics, strict=False):
        points = [(row["step"], row[key]) for row in rows if key in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / CURVES_PNG
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90), mode=0o644)
    plt.close(fig)
    return path
