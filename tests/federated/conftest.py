"""Phantom site cohorts for the federation tests (tiny: 32 x 32, 6 slices, 16 frames)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedcmr4d.data.phantom import write_phantom_cohort


def make_sites(root: Path, vendors: str, subjects: int = 3) -> Path:
    """One cohort folder per vendor letter under ``root/cohorts`` (site-0-A, site-1-B, ...)."""
    cohorts = root / "cohorts"
    for i, vendor in enumerate(vendors):
        write_phantom_cohort(
            cohorts / f"site-{i}-{vendor}",
            subjects,
            seed=100 + i,
            image_size=32,
            slices=6,
            frames=16,
            vendor=vendor,
            id_prefix=f"s{i}-",
        )
    return cohorts


@pytest.fixture
def two_sites(tmp_path: Path) -> Path:
    return make_sites(tmp_path, "AB")


@pytest.fixture
def site_maker() -> Callable[..., Path]:
    """``make_sites`` for tests that need other vendors or sizes."""
    return make_sites


@pytest.fixture
def flower_identity():
    """Messages need the identity a Flower runtime gives its process; set one for the test."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Messages need the identity a Flower runtime gives its process; set one for the test."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
