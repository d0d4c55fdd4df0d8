"""CLI commands: ``fedcmr4d label`` (labels for a synthetic cohort) and ``fedcmr4d utility``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.config import load_config


@app.command("label")
def label_command(
    synthetic: Path = typer.Option(..., "--synthetic", help="Cohort folder to label in place."),
    segmenter: Path = typer.Option(
        ..., "--segmenter", help="Segmenter checkpoint folder (`fedcmr4d train segmenter`)."
    ),
) -> None:
    """Segment every frame of every subject: labels.nii.gz, ED/ES frames and EF in meta.json.

    Run it after `fedcmr4d sample` and before `fedcmr4d audit`: the audit hashes every file and
    the release refuses files added later. A cohort sampled under DP is labelled only by a
    segmenter trained under DP (the federation's segmenter stage at DP sites); a local `train
    segmenter` one is refused there. Prints one JSON line: counts and the EF summary.

    Example: `fedcmr4d label --synthetic samples/ --segmenter runs/segmenter`
    """
    from fedcmr4d.pipelines.labelling import label_and_measure

    typer.echo(json.dumps(label_and_measure(synthetic, segmenter)))


@app.command("utility")
def utility_command(
    real_train: Path = typer.Option(..., "--real-train", help="Labelled real training cohort."),
    synthetic: Path = typer.Option(..., "--synthetic", help="Labelled synthetic cohort."),
    real_test: Path = typer.Option(..., "--real-test", help="Labelled real test cohort."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json and report.html."),
    config: str = typer.Option("tiny", "--config", help="Config name or YAML file."),
    overrides: list[str] = typer.Option([], "--set", help="Override one config value."),
    seeds: int | None = typer.Option(
        None,
        "--seeds",
        min=1,
        help="Train every arm with this many segmenter seeds and report the means, their "
        "spread and each arm's gap to (a) paired by seed [default: evaluate.utility_seeds].",
    ),
) -> None:
    """Train on real, synthetic and real + synthetic; test each on held-out real subjects.

    The segmenter (config `evaluate.*`: same steps and seeds for every arm) is trained three
    times per seed and scored on REAL_TEST: Dice per structure (LV, myocardium, RV) and EF absolute
    error. One seed's ranking of the arms can flip (a 1-3 Dice-point spread was measured on
    the demo's phantoms): compare arms with `--seeds 3` or more. In a federation a site runs
    this on its own data; only the scores leave.

    Example: `fedcmr4d utility --real-train cohort/train --synthetic samples/ --real-test
    cohort/test --out runs/utility`
    """
    from fedcmr4d.evaluate.utility import run_utility

    if seeds is not None:
        overrides = [*overrides, f"evaluate.utility_seeds={seeds}"]
    cfg = load_config(config, overrides)
    metrics = run_utility(real_train, synthetic, real_test, out, cfg=cfg)
    typer.echo(json.dumps(metrics["utility"]))
    typer.echo(f"report: {metrics['report']}")
