"""CLI command: ``fedcmr4d sample`` (a synthetic cohort from a stage-2 checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedcmr4d.cli import app


@app.command("sample")
def sample(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Stage-2 checkpoint folder."),
    subjects: int = typer.Option(..., "--subjects", min=1, help="Synthetic subjects to write."),
    out: Path = typer.Option(..., "--out", help="Output cohort folder."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling generator."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Subjects per diffusion pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    slicewise: bool = typer.Option(
        False, "--slicewise", help="Checkpoint is a slice-wise baseline (stack_slices: 1)."
    ),
    raw: bool = typer.Option(
        False, "--raw-weights", help="Use the raw UNet weights even if the checkpoint has EMA."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Synthetic cohort from a stage-2 checkpoint (which names its autoencoder)."""
    from fedcmr4d.pipelines.generation import sample_cohort, sample_slicewise

    fn = sample_slicewise if slicewise else sample_cohort
    cohort = fn(
        checkpoint,
        subjects,
        out,
        seed=seed,
        batch_size=batch_size,
        device=device,
        progress=not quiet,
        use_ema=not raw,
    )
    typer.echo(json.dumps({"out": str(out), "subjects": len(cohort)}))
