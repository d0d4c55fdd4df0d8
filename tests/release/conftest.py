"""Shared phantom cohorts for the release tests: train / holdout / fresh from disjoint seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedcmr4d.data.cohort import open_cohort, write_cohort_index, write_subject
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.release.controls import NEAR_COPY_KINDS, near_copy

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
