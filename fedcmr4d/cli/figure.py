"""CLI command: ``fedcmr4d figure`` (frame strips of synthetic, and optionally real, cines)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedcmr4d.cli import app


@app.command("figure")
def figure(
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic cohort folder."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    real: Path | None = typer.Option(None, "--real", help="A real cohort: one row on top."),
    subjects: int = typer.Option(3, "--subjects", min=1, help="Synthetic subjects (rows)."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames per row, evenly spaced."),
    slice_index: int | None = typer.Option(None, "--slice", help="Slice (default: middle)."),
) -> None:
    """Frame strips of a cohort's mid-ventricular slice, and each subject's pool-area change.

    Prints one JSON line: the PNG path and, per subject, the blood-pool area change over the
    cycle (`(max - min) / max`, 0 for a still image; a label-free check that the heart beats).
    """
    from fedcmr4d.pipelines.sample_figure import plot_frames

    changes = plot_frames(
        synthetic, out, real=real, n_subjects=subjects, n_frames=frames, slice_index=slice_index
    )
    typer.echo(json.dumps({"out": str(out), "pool_area_change": changes}))
