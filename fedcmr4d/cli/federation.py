"""CLI command: ``fedcmr4d app-digest`` (the digest a site pins in ``[supernode] app-digests``)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedcmr4d.cli import app


@app.command("app-digest")
def app_digest_command(
    app_dir: Path = typer.Argument(Path("."), help="The Flower app folder `flwr run` is given."),
    list_files: bool = typer.Option(
        False, "--list", help="Also list the files the bundle carries (what the digest covers)."
    ),
) -> None:
    """Print the digest of the app bundle that `flwr run APP_DIR` submits.

    The bundle is built with Flower's own builder (same `.gitignore` and include rules as
    `flwr run`), and the digest covers each file's name and content, not the zip's bytes: the
    same source gives the same digest on every machine. A site lists the digests it accepts in
    its site file, `[supernode] app-digests = ["sha256:..."]`; its SuperNode refuses any other
    bundle before unpacking it (see docs/site.md).

    Run it on a clean checkout: untracked files that Flower would bundle (e.g. `*.md`, `*.json`
    outside `.gitignore`) change the digest, exactly as they change what `flwr run` sends.

    Example: `fedcmr4d app-digest .`
    """
    from fedcmr4d.federated.pinning import build_fab, fab_digest, fab_members

    fab = build_fab(app_dir)
    if list_files:
        for name in fab_members(fab):
            typer.echo(f"  {name}")
    typer.echo(fab_digest(fab))
