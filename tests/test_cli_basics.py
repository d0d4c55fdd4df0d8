"""The installed ``fedcmr4d`` entry point: help, version and exit codes (subprocess)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from fedcmr4d import __version__


@pytest.fixture()
def cli(cli_process: Any) -> Any:
    """Help and exit codes come back fast: a 300 s limit."""
    return functools.partial(cli_process, timeout=300)


def test_version(cli: Any) -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fedcmr4d {__version__}"


def test_help_lists_commands_and_exit_codes(cli: Any) -> None:
    result = cli("--help")
    assert result.returncode == 0
    for word in ("phantom", "preprocess", "Exit codes"):
        assert word in result.stdout


def test_no_arguments_shows_help_not_a_traceback(cli: Any) -> None:
    result = cli()
    assert "Usage" in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_command_help_teaches_with_examples(cli: Any) -> None:
    for command in ("phantom", "preprocess"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, command
    assert "--format acdc" in cli("preprocess", "--help").stdout


def test_usage_errors_exit_2(cli: Any) -> None:
    assert cli("no-such-command").returncode == 2
    assert cli("phantom").returncode == 2  # --out is required
    result = cli("phantom", "--out", "x", "--subjects", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path: Path, cli: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  colour: red\n")
    result = cli(
        "preprocess",
        "--format",
        "nifti",
        "--input",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--config",
        str(config),
    )
    assert result.returncode == 2 and "data.colour: unknown key" in result.stderr
    result = cli(
        "preprocess",
        "--format",
        "nifti",
        "--input",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "data.frames=8",
    )
    assert result.returncode == 2 and "--set needs --config" in result.stderr


def test_unreadable_input_exits_3(tmp_path: Path, cli: Any) -> None:
    result = cli(
        "preprocess",
        "--format",
        "nifti",
        "--input",
        str(tmp_path / "absent"),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 3 and "does not exist" in result.stderr
