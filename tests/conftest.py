"""Suite-wide settings: small thread counts (CI has 2 cores), offline Flower, fixed seeds."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from fedcmr4d.cli import main  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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


@pytest.fixture()
def cli_process() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m fedcmr4d`` in its own process, as a user would: a wide terminal (rich does
    not wrap paths), ``threads`` OpenMP threads when given, killed after ``timeout`` seconds."""

    def run(
        *args: object, timeout: float = 600, threads: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COLUMNS": "200"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        return subprocess.run(
            [sys.executable, "-m", "fedcmr4d", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    return run
