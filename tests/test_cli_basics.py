"""The installed ``fedcmr4d`` entry point: help, version and exit codes (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedcmr4d import __version__


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedcmr4d", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fedcmr4d {__version__}"


def test_help_lists_commands_and_exit_codes() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for word in ("phantom", "preprocess", "Exit codes"):
        assert word in result.stdout


def test_no_arguments_shows_help_not_a_traceback() -> None:
    result = _run()
    assert "Usage" in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_command_help_teaches_with_examples() -> None:
    for command in ("phantom", "preprocess"):
        result = _run(command, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, command
    assert "--format acdc" in _run("preprocess", "--help").stdout


def test_usage_errors_exit_2() -> None:
    assert _run("no-such-command").returncode == 2
    assert _run("phantom").returncode == 2  # --out is required
    result = _run("phantom", "--out", "x", "--subjects", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  colour: red\n")
    result = _run(
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
    result = _run(
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


def test_unreadable_input_exits_3(tmp_path: Path) -> None:
    result = _run(
        "preprocess",
        "--format",
        "nifti",
        "--input",
        str(tmp_path / "absent"),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 3 and "does not exist" in result.stderr
