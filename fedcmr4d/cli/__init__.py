"""The ``fedcmr4d`` command.

Each command group lives in its own module and registers on :data:`app`; :func:`main` maps
:class:`~fedcmr4d.errors.FedCMRError` subclasses onto the exit codes documented in DESIGN.md
(2 usage/config, 3 unreadable input, 4 audit failed/refused, 5 invalid release, 6 budget).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fedcmr4d import __version__
from fedcmr4d.errors import FedCMRError

app = typer.Typer(
    name="fedcmr4d",
    help=(
        "Federated, private generation of 4D cine cardiac MRI, and audited, signed synthetic "
        "releases.\n\n"
        "Typical flow: `fedcmr4d preprocess` (each site) -> `flwr run .` or `fedcmr4d demo` "
        "(training) -> `fedcmr4d sample` -> `fedcmr4d audit` -> `fedcmr4d release` -> "
        "`fedcmr4d verify` (recipients).\n\n"
        "Exit codes: 0 ok, 2 usage/config error, 3 unreadable input, 4 audit failed / release "
        "refused, 5 invalid release, 6 privacy budget exhausted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedcmr4d {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Federated 4D cine CMR generation."""


def _register() -> None:
    from fedcmr4d.cli import (  # noqa: F401
        audit,
        data,
        demo,
        evaluate,
        export,
        federation,
        figure,
        label,
        release,
        sample,
        split,
        train,
    )


def main() -> None:
    """Console entry point: run the app, turn known errors into one line and an exit code."""
    _register()
    try:
        app()
    except FedCMRError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
