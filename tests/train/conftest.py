"""Small shared fixtures: one tiny phantom cohort (32 x 32 x 6 x 16) per test session."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedcmr4d.cli import main
from fedcmr4d.config import Config, load_config
from fedcmr4d.data.phantom import write_phantom_cohort


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train") / "cohort"
    write_phantom_cohort(root, 4, seed=3, image_size=32, slices=6, frames=16)
    return root


@pytest.fixture()
def tiny_cfg() -> Config:
    return load_config("tiny")


@pytest.fixture()
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str]]:
    """Run the real console entry point in-process; return (exit code, stdout + stderr)."""

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["fedcmr4d", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run
