"""CLI commands: ``fedcmr4d train <stage>`` (the ``train`` group) and ``fedcmr4d sample``."""

from __future__ import annotations

import typer

from fedcmr4d.cli import app

train_app = typer.Typer(
    help="Train one stage on one site's cohort (the same code a federated site runs).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")
