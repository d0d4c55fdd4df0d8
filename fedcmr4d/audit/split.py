"""Split integrity: the train and holdout sets an audit compares must not share a patient.

An audit whose holdout set contains a training subject calibrates its bar on a copy and passes
memorised cohorts (threshold 0). :func:`check_disjoint` refuses shared subject ids and identical
cines -- the same ``cine.nii.gz`` bytes (SHA-256 of the file) or the same voxel array (SHA-256
of the float32 array, so a re-compressed copy is caught too).

:func:`write_split` writes the steward's ``train/`` and ``holdout/`` cohort folders from the
seeded split a model was trained with (:func:`fedcmr4d.train.local.split_subjects`: the split is
not stored in the checkpoint, it is recomputed by the site from its config).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcmr4d.config import Config
from fedcmr4d.data.cohort import CINE_FILE, COHORT_INDEX, open_cohort, write_cohort_index
from fedcmr4d.errors import ConfigError
from fedcmr4d.io import read_json_object, sha256_file


def _fingerprints(dirs: Sequence[str | Path]) -> dict[str, list[tuple[str, str]]]:
    """subject id -> [(file sha, array sha)] over the given cohorts."""
    out: dict[str, list[tuple[str, str]]] = {}
    for d in dirs:
        cohort = open_cohort(d)
        for subject_id in cohort.subject_ids:
            subject = cohort.load(subject_id, with_labels=False)
            array = np.ascontiguousarray(subject.cine, dtype=np.float32)
            array_sha = hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()
            file_sha = sha256_file(Path(d) / subject_id / CINE_FILE)
            out.setdefault(subject_id, []).append((file_sha, array_sha))
    return out


def check_disjoint(train_dirs: Sequence[str | Path], holdout_dirs: Sequence[str | Path]) -> None:
    """Raise :class:`ConfigError` (exit 2) naming subjects shared by train and holdout."""
    train, holdout = _fingerprints(train_dirs), _fingerprints(holdout_dirs)
    shared_ids = sorted(set(train) & set(holdout))
    by_hash: dict[str, str] = {}
    for subject_id, prints in train.items():
        for file_sha, array_sha in prints:
            by_hash[file_sha] = by_hash[array_sha] = subject_id
    same_cine = sorted(
        f"{subject_id} = train {by_hash[h]}"
        for subject_id, prints in holdout.items()
        for pair in prints
        for h in pair
        if h in by_hash and subject_id not in shared_ids
    )
    problems = []
    if shared_ids:
        problems.append(f"subject id(s) in both: {', '.join(shared_ids)}")
    if same_cine:
        problems.append(f"identical cine(s): {', '.join(sorted(set(same_cine)))}")
    if problems:
        raise ConfigError(
            "audit: the train and holdout sets overlap ("
            + "; ".join(problems)
            + "); an overlapping holdout set makes the threshold 0 and passes copies. Write "
            "the split with `fedcmr4d split --config C --data COHORT --out DIR`"
        )


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_split(cfg: Config, cohort_dir: str | Path, out: str | Path) -> dict[str, list[str]]:
    """``out/train`` and ``out/holdout`` cohorts (hard links, else copies) from the seeded split.

    Args:
        cfg: the config the model was trained with (``data.holdout_fraction``, ``seed``).
        cohort_dir: the site's cohort.
        out: folder to create (must not exist or be empty).

    Returns:
        {"train": ids, "holdout": ids} (this stays with the site / steward).
    """
    from fedcmr4d.train.local import split_subjects

    source, target = Path(cohort_dir), Path(out)
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target}: exists and is not empty; choose another --out")
    cohort = open_cohort(source)
    index = read_json_object(source / COHORT_INDEX, "cohort index")
    train, holdout = split_subjects(list(cohort.subject_ids), cfg.data.holdout_fraction, cfg.seed)
    for name, ids in (("train", train), ("holdout", holdout)):
        folder = target / name
        folder.mkdir(parents=True, exist_ok=True)
        for subject_id in ids:
            for file in sorted((source / subject_id).iterdir()):
                if file.is_file():
                    _link_or_copy(file, folder / subject_id / file.name)
        provenance = dict(index.get("provenance") or {})
        provenance["split"] = {
            "part": name,
            "holdout_fraction": cfg.data.holdout_fraction,
            "seed": cfg.seed,
        }
        spacing = index.get("spacing_mm")
        write_cohort_index(
            folder,
            ids,
            spacing=tuple(spacing) if spacing else (1.0, 1.0, 10.0),  # type: ignore[arg-type]
            frames=index.get("frames"),
            provenance=provenance,
        )
    return {"train": train, "holdout": holdout}
