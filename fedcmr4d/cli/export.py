"""CLI command: ``fedcmr4d export --format nnunet SOURCE --out DIR`` (other tools' layouts)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.errors import ConfigError

FORMATS = ("nnunet",)


@app.command("export")
def export(
    source: Path = typer.Argument(..., help="A cohort folder, or a release (its cohort/)."),
    out: Path = typer.Option(..., "--out", help="Folder to create, e.g. Dataset501_SynthCine."),
    fmt: str = typer.Option("nnunet", "--format", help="Target layout: nnunet (nnU-Net v2 raw)."),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Verify SOURCE as a signed release with this key first."
    ),
) -> None:
    """Write a cohort in another tool's layout: nnU-Net v2 raw (`--format nnunet`).

    One 3D case per labelled frame in imagesTr/labelsTr; subjects without labels go, every
    frame, to imagesTs. Prints one JSON line with the counts.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    from fedcmr4d.release.nnunet import export_nnunet

    if public_key is not None:
        from fedcmr4d.release.verify import verify_release

        verify_release(source, public_key)
    result = export_nnunet(source, out)
    typer.echo(
        json.dumps(
            {
                "out": str(result.out_dir),
                "training_cases": result.n_training,
                "test_images": result.n_test,
                "subjects_without_labels": len(result.subjects_without_labels),
            }
        )
    )
