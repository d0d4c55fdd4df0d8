"""Suite-wide settings: small thread counts (CI has 2 cores), offline Flower, fixed seeds."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fedcmr4d.audit.controls import NEAR_COPY_KINDS, near_copy  # noqa: E402
from fedcmr4d.cli import main  # noqa: E402
from fedcmr4d.data.cohort import open_cohort, write_cohort_index, write_subject  # noqa: E402
from fedcmr4d.data.phantom import write_phantom_cohort  # noqa: E402

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


# Shared phantom cohorts for the audit and release tests: train / holdout / fresh, disjoint seeds.
SIZE, SLICES, FRAMES = 32, 6, 16


@dataclass
class Cohorts:
    train: Path
    holdout: Path
    fresh: Path
    planted: Path
    planted_kinds: dict[str, str]  # planted synthetic id -> near-copy kind


def write_planted(out: Path, train: Path, fresh: Path, per_kind: int, seed: int) -> dict[str, str]:
    """Fresh subjects plus ``per_kind`` near-copies of training subjects of every kind."""
    rng = np.random.default_rng(seed)
    train_cohort, fresh_cohort = open_cohort(train), open_cohort(fresh)
    ids, kinds = [], {}
    for subject in fresh_cohort:
        write_subject(out, subject)
        ids.append(subject.subject_id)
    sources = rng.choice(len(train_cohort), size=per_kind * len(NEAR_COPY_KINDS), replace=False)
    for n, index in enumerate(sources):
        kind = NEAR_COPY_KINDS[n % len(NEAR_COPY_KINDS)]
        subject = train_cohort.load(train_cohort.subject_ids[int(index)])
        subject.subject_id = f"copy-{kind}-{n:02d}"
        subject.cine = near_copy(subject.cine, kind, rng)
        write_subject(out, subject)
        ids.append(subject.subject_id)
        kinds[subject.subject_id] = kind
    write_cohort_index(out, ids, frames=FRAMES, provenance={"source": "planted test cohort"})
    return kinds


@pytest.fixture(scope="session")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> Cohorts:
    root = tmp_path_factory.mktemp("release-cohorts")
    kw = {"image_size": SIZE, "slices": SLICES, "frames": FRAMES}
    write_phantom_cohort(root / "train", 40, 101, id_prefix="train", **kw)
    write_phantom_cohort(root / "holdout", 20, 102, id_prefix="hold", **kw)
    write_phantom_cohort(root / "fresh", 20, 103, id_prefix="fresh", **kw)
    kinds = write_planted(root / "planted", root / "train", root / "fresh", 2, seed=7)
    return Cohorts(root / "train", root / "holdout", root / "fresh", root / "planted", kinds)
