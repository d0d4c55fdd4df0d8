"""CLI command: ``fedcmr4d evaluate`` (metrics.json, report.html and plots)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.config import load_config


@app.command("evaluate")
def evaluate_command(
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic cohort folder."),
    real: Path = typer.Option(..., "--real", help="Real cohort folder."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json, report.html, plots/."),
    segmenter: Path | None = typer.Option(
        None,
        "--segmenter",
        help="Segmenter checkpoint folder; default: train one on the real cohort's labels.",
    ),
    config: str = typer.Option("tiny", "--config", help="Config name or YAML file."),
    overrides: list[str] = typer.Option([], "--set", help="Override one config value."),
) -> None:
    """FID across depth, LV volume curves and EF, and a self-contained report.html.

    Writes OUT/metrics.json, OUT/report.html and OUT/plots/. Without --segmenter, trains one on
    the real cohort's labelled frames into OUT/segmenter/ first.

    Example: `fedcmr4d evaluate --synthetic samples/ --real cohort/ --out runs/eval
    --segmenter runs/segmenter`
    """
    from fedcmr4d.evaluate import evaluate_cohorts

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(config, overrides)
    metrics = evaluate_cohorts(synthetic, real, out, segmenter_dir=segmenter, cfg=cfg)
    summary = {
        k: metrics[k] for k in ("fid_mean", "fid_std", "fid_real_real_mean", "fid_ratio", "ef_w1")
    }
    typer.echo(json.dumps(summary))
    typer.echo(f"report: {metrics['report']}")
