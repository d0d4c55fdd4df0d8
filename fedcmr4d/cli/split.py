"""CLI command: ``fedcmr4d split`` (the steward's train/holdout folders of a trained model)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.config import load_config


@app.command("split")
def split(
    config: str = typer.Option(..., "--config", help="The config the model was trained with."),
    data: Path = typer.Option(..., "--data", help="The cohort the model was trained on."),
    out: Path = typer.Option(..., "--out", help="Folder for train/ and holdout/ (new or empty)."),
    overrides: list[str] = typer.Option([], "--set", help="Override, e.g. seed=1."),
) -> None:
    """Write OUT/train and OUT/holdout cohorts from the seeded split of `fedcmr4d train`.

    The split is not stored in checkpoints (they name no subject); it is recomputed from
    `data.holdout_fraction` and `seed`, exactly as training did. Files are hard-linked where
    possible, else copied. Use the two folders as `fedcmr4d audit --train/--holdout`.
    """
    from fedcmr4d.audit.split import write_split

    parts = write_split(load_config(config, overrides), data, out)
    typer.echo(
        json.dumps(
            {
                "train": str(out / "train"),
                "holdout": str(out / "holdout"),
                "n_train": len(parts["train"]),
                "n_holdout": len(parts["holdout"]),
            }
        )
    )
