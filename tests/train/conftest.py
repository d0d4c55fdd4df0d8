"""Small shared fixtures: one tiny phantom cohort (32 x 32 x 6 x 16) per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

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
