"""`fedcmr4d split`: the steward's train/holdout folders from the seeded training split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcmr4d.config import load_config
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.train.local import split_subjects


def test_split_writes_the_training_split_as_two_cohorts(run_cli: Any, tmp_path: Path):
    cohort = tmp_path / "cohort"
    write_phantom_cohort(cohort, 8, 5, image_size=32, slices=6, frames=16, id_prefix="p")
    code, text = run_cli("split", "--config", "tiny", "--data", cohort, "--out", tmp_path / "s")
    assert code == 0, text
    summary = json.loads(text.strip().splitlines()[-1])
    assert (summary["n_train"], summary["n_holdout"]) == (6, 2)
    train, holdout = open_cohort(tmp_path / "s" / "train"), open_cohort(tmp_path / "s" / "holdout")
    cfg = load_config("tiny")
    expected = split_subjects(open_cohort(cohort).subject_ids, cfg.data.holdout_fraction, cfg.seed)
    assert (list(train.subject_ids), list(holdout.subject_ids)) == expected
    first = train.subject_ids[0]
    assert (tmp_path / "s/train" / first / "cine.nii.gz").read_bytes() == (
        cohort / first / "cine.nii.gz"
    ).read_bytes()
    code, text = run_cli("split", "--config", "tiny", "--data", cohort, "--out", tmp_path / "s")
    assert code == 2 and "not empty" in text
