"""The cohort format: round trip, atomic writes, and errors that name the file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedcmr4d.data.cohort import (
    CINE_FILE,
    COHORT_INDEX,
    COHORT_SPACING_MM,
    LABELS_FILE,
    Subject,
    cohort_affine,
    open_cohort,
    read_subject,
    write_cohort_index,
    write_subject,
)
from fedcmr4d.errors import InputError


def _subject(subject_id: str = "s01") -> Subject:
    rng = np.random.default_rng(0)
    cine = rng.random((8, 6, 3, 4), dtype=np.float32)
    labels = np.full(cine.shape, 255, dtype=np.uint8)
    labels[..., 0] = rng.integers(0, 4, size=cine.shape[:3])
    affine = np.diag([1.0, 1.0, 10.0, 1.0])
    affine[:3, 3] = [-4.0, 2.0, 5.0]
    return Subject(subject_id, cine, affine, 33.0, labels, {"ed_frame": 0, "vendor": "A"})


def test_round_trip_keeps_voxels_geometry_and_meta(tmp_path: Path) -> None:
    subject = _subject()
    write_subject(tmp_path, subject)
    write_cohort_index(tmp_path, ["s01"], frames=4)
    back = open_cohort(tmp_path).load("s01")
    np.testing.assert_array_equal(back.cine, subject.cine)
    np.testing.assert_array_equal(back.labels, subject.labels)
    np.testing.assert_allclose(back.affine, subject.affine)
    assert back.zooms == (1.0, 1.0, 10.0)
    assert back.frame_ms == pytest.approx(33.0)
    assert back.meta == {"ed_frame": 0, "vendor": "A"}
    header = nib.load(str(tmp_path / "s01" / CINE_FILE)).header
    assert header.get_xyzt_units() == ("mm", "msec")


def test_the_cohort_grid_is_the_one_spacing_constant(tmp_path: Path) -> None:
    # The format fixes the grid: the index records it and cohort_affine draws on it.
    assert COHORT_SPACING_MM == (1.0, 1.0, 10.0)
    affine = cohort_affine(32)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), COHORT_SPACING_MM)
    np.testing.assert_allclose(affine @ [15.5, 15.5, 2, 1], [0.0, 0.0, 20.0, 1.0])
    write_cohort_index(tmp_path, [])
    index = json.loads((tmp_path / COHORT_INDEX).read_text())
    assert index["spacing_mm"] == list(COHORT_SPACING_MM)


def test_rewrite_replaces_folder_and_leaves_no_temporaries(tmp_path: Path) -> None:
    write_subject(tmp_path, _subject())
    replacement = _subject()
    replacement.labels = None
    write_subject(tmp_path, replacement)
    assert not (tmp_path / "s01" / LABELS_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s01"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    bad = _subject()
    bad.cine = bad.cine.copy()
    bad.cine[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_subject(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("subject_id", ["", "../x", "a b", ".hidden"])
def test_unsafe_subject_ids_are_refused(tmp_path: Path, subject_id: str) -> None:
    with pytest.raises(InputError, match="subject id"):
        write_subject(tmp_path, _subject(subject_id))


def test_truncated_cine_names_the_file(tmp_path: Path) -> None:
    write_subject(tmp_path, _subject())
    path = tmp_path / "s01" / CINE_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=str(path)):
        read_subject(tmp_path, "s01")


def test_three_d_cine_is_refused(tmp_path: Path) -> None:
    write_subject(tmp_path, _subject())
    path = tmp_path / "s01" / CINE_FILE
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="expected 4D"):
        read_subject(tmp_path, "s01")


def test_text_file_named_nifti_is_refused(tmp_path: Path) -> None:
    write_subject(tmp_path, _subject())
    path = tmp_path / "s01" / CINE_FILE
    with gzip.open(path, "wt") as handle:
        handle.write("not an image")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_subject(tmp_path, "s01")


def test_open_cohort_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=COHORT_INDEX):
        open_cohort(tmp_path)
    (tmp_path / COHORT_INDEX).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(InputError, match="missing key 'subjects'"):
        open_cohort(tmp_path)
    write_cohort_index(tmp_path, ["ghost"])
    with pytest.raises(InputError, match="ghost"):
        open_cohort(tmp_path)


def test_subject_meta_must_be_a_json_object(tmp_path: Path) -> None:
    write_subject(tmp_path, _subject())
    meta = tmp_path / "s01" / "meta.json"
    meta.write_text("[1, 2]")
    with pytest.raises(InputError, match=r"meta\.json: subject meta must be a JSON object"):
        read_subject(tmp_path, "s01")
    meta.write_text("{broken")
    with pytest.raises(InputError, match=r"meta\.json: invalid JSON in subject meta"):
        read_subject(tmp_path, "s01")
