"""Per-round metrics of a federated run: ``metrics.jsonl``, ``metrics.csv`` and ``metrics.png``.

All three are rewritten from the checkpointed history after every round, so after a crash and a
resume they hold each completed round exactly once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcmr4d.io import atomic_write_bytes, atomic_write_text

FIXED_COLUMNS = (
    "stage",
    "round",
    "sites_replied",
    "sites_accepted",
    "sites_rejected",
    "bytes_to_sites",
    "bytes_from_sites",
    "model_bytes",
    "seconds",
)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {key: row.get(key) for key in FIXED_COLUMNS}
    flat["sites_rejected"] = len(row.get("rejected", []))
    for section in ("train", "evaluate"):
        for key, value in (row.get(section) or {}).items():
            flat[f"{section}/{key}"] = value
    return flat


def write_metrics(out_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite the three metrics files in ``out_dir`` from the full history.

    Args:
        out_dir: the coordinator's output folder.
        history: one dict per completed round (see ``server_app.run_round``).
    """
    out_dir = Path(out_dir)
    atomic_write_text(
        out_dir / "metrics.jsonl",
        "".join(json.dumps(row, sort_keys=True) + "\n" for row in history),
    )
    flats = [_flat(row) for row in history]
    columns = list(FIXED_COLUMNS) + sorted({k for f in flats for k in f} - set(FIXED_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flats)
    atomic_write_text(out_dir / "metrics.csv", buffer.getvalue())
    if history:
        plot_metrics(out_dir / "metrics.png", flats)


def plot_metrics(path: Path, flats: Sequence[dict[str, Any]]) -> None:
    """One panel per stage: every aggregated ``train/*`` loss against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stages = list(dict.fromkeys(str(f["stage"]) for f in flats))
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        rows = [f for f in flats if f["stage"] == stage]
        keys = sorted(
            {
                k
                for f in rows
                for k in f
                if k.startswith(("train/", "evaluate/"))
                and "loss" in k
                and isinstance(f[k], int | float)
            }
        )
        for key in keys:
            points = [(f["round"], f[key]) for f in rows if isinstance(f.get(key), int | float)]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
        ax.set_title(f"{stage}: aggregated losses")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
