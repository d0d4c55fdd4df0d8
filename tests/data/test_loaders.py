"""Source readers on phantom folders written in the real ACDC, M&Ms-2 and flat-NIfTI layouts."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedcmr4d.data.acdc import find_acdc_subjects, load_acdc_subject, parse_info_cfg
from fedcmr4d.data.cohort import LABEL_LV, LABEL_RV, LABEL_UNLABELLED
from fedcmr4d.data.mnms2 import find_mnms2_subjects, read_information_csv
from fedcmr4d.data.nifti import find_generic_subjects, read_volume
from fedcmr4d.data.phantom import ed_es_frames
from fedcmr4d.data.phantom_sources import (
    SourceGeometry,
    write_acdc_patient,
    write_generic_subject,
    write_mnms2_information,
    write_mnms2_subject,
)
from fedcmr4d.errors import InputError

SMALL = SourceGeometry(shape=(72, 60, 6), zooms=(2.5, 2.5, 10.0), frames=12)


def test_acdc_patient_labels_frames_and_meta(tmp_path: Path) -> None:
    folder, params, truth = write_acdc_patient(tmp_path / "training", 7, 3, SMALL, ed_phase=0.25)
    ed, es = ed_es_frames(params, SMALL.frames)
    assert ed != 0  # the Info.cfg frame numbers are 1-based: ED is not frame 1 here
    info = parse_info_cfg(folder / "Info.cfg")
    assert int(info["ED"]) == ed + 1
    subjects = find_acdc_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == ["patient007"]
    subject = subjects[0].load()
    assert subject.cine.shape == (72, 60, 6, 12) and subject.cine.dtype == np.float32
    assert subject.meta["ed_frame"] == ed and subject.meta["es_frame"] == es
    assert subject.meta["split"] == "training" and subject.meta["source"] == "acdc"
    assert subject.meta["group"] in ("NOR", "DCM")
    assert subject.labels is not None
    # ACDC 3 (LV) / 1 (RV) are back on the cohort map: identical to the phantom's truth.
    np.testing.assert_array_equal(subject.labels[..., ed], truth[..., ed])
    np.testing.assert_array_equal(subject.labels[..., es], truth[..., es])
    others = [t for t in range(12) if t not in (ed, es)]
    assert (subject.labels[..., others] == LABEL_UNLABELLED).all()
    np.testing.assert_allclose(subject.affine, nib.load(folder / "patient007_4d.nii.gz").affine)
    assert subject.frame_ms == pytest.approx(params.cycle_ms / 12, rel=1e-4)


def test_acdc_accepts_database_split_or_patient_folder(tmp_path: Path) -> None:
    write_acdc_patient(tmp_path / "training", 1, 1, SMALL)
    write_acdc_patient(tmp_path / "testing", 101, 2, SMALL)
    assert [s.subject_id for s in find_acdc_subjects(tmp_path)] == ["patient001", "patient101"]
    assert [s.subject_id for s in find_acdc_subjects(tmp_path / "testing")] == ["patient101"]
    one = find_acdc_subjects(tmp_path / "training" / "patient001")
    assert [s.subject_id for s in one] == ["patient001"]


def test_acdc_missing_info_cfg_names_the_file(tmp_path: Path) -> None:
    folder, _, _ = write_acdc_patient(tmp_path, 2, 1, SMALL)
    (folder / "Info.cfg").unlink()
    with pytest.raises(InputError, match=r"Info\.cfg.*missing"):
        load_acdc_subject(folder)


def test_mnms2_finds_ed_es_by_matching_and_reads_csv(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    _, params, truth = write_mnms2_subject(dataset, 1, 5, SMALL, ed_phase=0.4)
    write_mnms2_subject(dataset, 2, 6, SMALL)
    write_mnms2_information(tmp_path, [(1, "HCM", "SIEMENS"), (2, "NOR", "Philips")])
    rows = read_information_csv(tmp_path / "dataset_information.csv")
    assert sorted(rows) == ["001", "002"]  # trailing empty rows skipped
    subjects = find_mnms2_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == ["001", "002"]
    subject = subjects[0].load()
    ed, es = ed_es_frames(params, SMALL.frames)
    assert ed != 0
    assert subject.meta["ed_frame"] == ed and subject.meta["es_frame"] == es
    assert subject.meta["group"] == "HCM" and subject.meta["vendor"] == "SIEMENS"
    assert subject.meta["ed_match_diff"] == 0.0
    assert subject.labels is not None
    np.testing.assert_array_equal(subject.labels[..., ed], truth[..., ed])
    assert (subject.labels[..., ed] == LABEL_LV).any() and (
        subject.labels[..., es] == LABEL_RV
    ).any()


def test_mnms2_unmatched_ed_volume_is_rejected(tmp_path: Path) -> None:
    folder, _, _ = write_mnms2_subject(tmp_path, 3, 7, SMALL)
    ed_path = folder / "003_SA_ED.nii.gz"
    image = nib.load(ed_path)
    noise = np.random.default_rng(0).normal(0, 500, image.shape).astype(np.int16)
    nib.save(nib.Nifti1Image(noise, image.affine), ed_path)
    with pytest.raises(InputError, match="matches no frame"):
        find_mnms2_subjects(tmp_path)[0].load()


def test_generic_nifti_with_4d_labels(tmp_path: Path) -> None:
    path, params, truth = write_generic_subject(tmp_path, "site-a_01", 9, SMALL)
    write_generic_subject(tmp_path, "site-a_02", 10, SMALL, with_labels=False)
    subjects = find_generic_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == ["site-a_01", "site-a_02"]
    labelled, unlabelled = subjects[0].load(), subjects[1].load()
    ed, _ = ed_es_frames(params, SMALL.frames)
    assert labelled.meta["ed_frame"] == ed  # the frame with the largest labelled LV
    assert labelled.labels is not None
    np.testing.assert_array_equal(labelled.labels[..., ed], truth[..., ed])
    assert unlabelled.labels is None and unlabelled.meta["ed_frame"] == 0


@pytest.mark.parametrize(
    ("writer", "match"),
    [
        (lambda p: p.write_text("not an image"), "not a NIfTI"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4)), p), "4D"),
        (
            lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 0, 3, 2), np.float32), np.eye(4)), p),
            "zero-size",
        ),
        (
            lambda p: nib.save(
                nib.Nifti1Image(np.full((4, 4, 3, 2), np.nan, np.float32), np.eye(4)), p
            ),
            "NaN",
        ),
    ],
)
def test_read_volume_names_file_and_problem(tmp_path: Path, writer, match: str) -> None:
    path = tmp_path / "bad.nii.gz"
    writer(path)
    with pytest.raises(InputError, match=match) as info:
        read_volume(path, 4)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(30, 30, 4, 6).astype(np.float32), np.eye(4)), good)
    data = good.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.nii.gz"):
        read_volume(bad, 4)


def test_mnms2_rescaled_ed_volume_still_matches(tmp_path: Path) -> None:
    folder, params, _ = write_mnms2_subject(tmp_path, 4, 8, SMALL, ed_phase=0.5)
    ed, _ = ed_es_frames(params, SMALL.frames)
    ed_path = folder / "004_SA_ED.nii.gz"
    image = nib.load(ed_path)
    rescaled = np.asarray(image.dataobj).astype(np.float32) * 0.5 + 20.0
    nib.save(nib.Nifti1Image(rescaled, image.affine), ed_path)
    subject = find_mnms2_subjects(tmp_path)[0].load()
    assert subject.meta["ed_frame"] == ed and subject.meta["ed_match_diff"] < 1e-3


def test_implausible_or_missing_frame_time_falls_back_to_one_second_cycle(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((8, 8, 2, 20)).astype(np.float32)
    for name, zoom, unit in (("sec", 1.0, "sec"), ("none", 1.0, "unknown"), ("ok", 40.0, "msec")):
        image = nib.Nifti1Image(data, np.eye(4))
        image.header.set_zooms((1.0, 1.0, 10.0, zoom))
        image.header.set_xyzt_units("mm", unit)
        nib.save(image, tmp_path / f"{name}.nii.gz")
    subjects = {s.subject_id: s.load() for s in find_generic_subjects(tmp_path)}
    assert subjects["ok"].frame_ms == pytest.approx(40.0)
    assert subjects["ok"].meta["frame_ms_source"] == "header"
    for name in ("sec", "none"):  # 20 s cycle, or no unit: a 1 s cycle is assumed and said
        assert subjects[name].frame_ms == pytest.approx(50.0)
        assert "assumed" in subjects[name].meta["frame_ms_source"]


def test_labels_with_the_same_shape_but_another_affine_are_rejected(tmp_path: Path) -> None:
    write_generic_subject(tmp_path, "s", 12, SMALL)
    gt = nib.load(tmp_path / "s_gt.nii.gz")
    shifted = gt.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(gt.dataobj), shifted), tmp_path / "s_gt.nii.gz")
    with pytest.raises(InputError, match="s_gt.nii.gz: labels on a grid other.*affine differs"):
        find_generic_subjects(tmp_path)[0].load()
