"""``fedcmr4d preprocess`` and ``fedcmr4d phantom`` through the real command (subprocess)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from fedcmr4d.data.cohort import LABEL_LV, open_cohort
from fedcmr4d.data.phantom import ed_es_frames
from fedcmr4d.data.phantom_sources import (
    SourceGeometry,
    write_acdc_patient,
    write_generic_subject,
    write_mnms2_information,
    write_mnms2_subject,
)

SMALL = SourceGeometry(shape=(64, 56, 5), zooms=(2.5, 2.5, 10.0), frames=10)


@pytest.fixture()
def cli(cli_process: Any) -> Any:
    """One OpenMP thread per CLI process."""
    return functools.partial(cli_process, threads=1)


def _check_cohort(out: Path, expected: dict[str, tuple[float, float]], size: int) -> None:
    """zooms (1, 1, 10), 32 frames, [0, 1], LV volume at ED and ES within 5 % of the source."""
    cohort = open_cohort(out)
    assert sorted(cohort.subject_ids) == sorted(expected)
    for subject in cohort:
        assert subject.cine.shape[:2] == (size, size) and subject.cine.shape[3] == 32
        np.testing.assert_allclose(subject.zooms, (1.0, 1.0, 10.0), atol=1e-5)
        assert 0.0 <= float(subject.cine.min()) and float(subject.cine.max()) <= 1.0
        ed, es = subject.meta["ed_frame"], subject.meta["es_frame"]
        assert subject.labels is not None
        ed_ml = (subject.labels[..., ed] == LABEL_LV).sum() * 10.0 / 1000.0
        es_ml = (subject.labels[..., es] == LABEL_LV).sum() * 10.0 / 1000.0
        assert ed_ml == pytest.approx(expected[subject.subject_id][0], rel=0.05)
        assert es_ml == pytest.approx(expected[subject.subject_id][1], rel=0.05)


def _lv_ml(labels: np.ndarray, frames: tuple[int, int], geometry: SourceGeometry) -> tuple:
    voxel = float(np.prod(geometry.zooms)) / 1000.0
    return tuple(float((labels[..., f] == LABEL_LV).sum() * voxel) for f in frames)


@pytest.mark.slow
def test_preprocess_acdc_and_mnms2_realistic_folders(tmp_path: Path, cli: Any) -> None:
    acdc_geometries = [
        SourceGeometry(shape=(256, 216, 10), zooms=(1.4, 1.4, 10.0), frames=25),
        SourceGeometry(shape=(176, 144, 11), zooms=(1.9, 1.9, 8.0), frames=14, tilt_deg=50),
    ]
    expected = {}
    for number, geometry in enumerate(acdc_geometries, start=1):
        folder, params, labels = write_acdc_patient(
            tmp_path / "acdc" / "training", number, 40 + number, geometry, ed_phase=0.1 * number
        )
        frames = ed_es_frames(params, geometry.frames)
        expected[folder.name] = _lv_ml(labels, frames, geometry)
    result = cli(
        "preprocess",
        "--format",
        "acdc",
        "--input",
        str(tmp_path / "acdc"),
        "--out",
        str(tmp_path / "acdc_out"),
        "--image-size",
        "192",
    )
    assert result.returncode == 0, result.stderr
    assert "2 written, 0 rejected" in result.stderr
    _check_cohort(tmp_path / "acdc_out", expected, 192)

    mnms_geometries = [
        SourceGeometry(shape=(240, 196, 9), zooms=(1.3, 1.3, 10.0), frames=20, inplane_deg=-30),
        SourceGeometry(shape=(160, 192, 14), zooms=(1.6, 1.6, 10.0), frames=12, tilt_deg=25),
    ]
    expected = {}
    for number, geometry in enumerate(mnms_geometries, start=1):
        folder, params, labels = write_mnms2_subject(
            tmp_path / "MnM2" / "dataset", number, 60 + number, geometry, ed_phase=0.3 * number
        )
        expected[folder.name] = _lv_ml(labels, ed_es_frames(params, geometry.frames), geometry)
    write_mnms2_information(tmp_path / "MnM2", [(1, "NOR", "SIEMENS"), (2, "LV", "GE")])
    result = cli(
        "preprocess",
        "--format",
        "mnms2",
        "--input",
        str(tmp_path / "MnM2"),
        "--out",
        str(tmp_path / "mnms2_out"),
        "--image-size",
        "192",
    )
    assert result.returncode == 0, result.stderr
    _check_cohort(tmp_path / "mnms2_out", expected, 192)
    meta = json.loads((tmp_path / "mnms2_out" / "002" / "meta.json").read_text())
    assert meta["vendor"] == "GE" and meta["group"] == "LV" and meta["source"] == "mnms2"


def _replace_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


@pytest.mark.slow
def test_every_bad_acdc_input_is_named_skipped_and_the_rest_written(
    tmp_path: Path, cli: Any
) -> None:
    root = tmp_path / "database" / "training"
    folders = {n: write_acdc_patient(root, n, n, SMALL)[0] for n in range(1, 9)}
    cine = folders[2] / "patient002_4d.nii.gz"
    cine.write_bytes(cine.read_bytes()[:2000])  # truncated .nii.gz
    _replace_nifti(folders[3] / "patient003_4d.nii.gz", np.zeros((64, 56, 5), np.int16))  # 3D
    bad = np.asarray(nib.load(folders[4] / "patient004_4d.nii.gz").dataobj).astype(np.float32)
    bad[3, 3, 1, 2] = np.nan
    _replace_nifti(folders[4] / "patient004_4d.nii.gz", bad)  # NaN voxel
    (folders[5] / "patient005_4d.nii.gz").write_text("this is a text file\n")
    _replace_nifti(folders[6] / "patient006_4d.nii.gz", np.zeros((64, 0, 5, 10), np.int16))
    (folders[7] / "Info.cfg").unlink()
    gt = next(folders[8].glob("*_gt.nii.gz"))
    _replace_nifti(gt, np.zeros((32, 28, 5), np.uint8))  # labels on another grid

    out = tmp_path / "out"
    result = cli(
        "preprocess",
        "--format",
        "acdc",
        "--input",
        str(tmp_path / "database"),
        "--out",
        str(out),
        "--image-size",
        "64",
        "--frames",
        "16",
    )
    assert result.returncode == 3, result.stderr
    err = result.stderr
    assert "1 written, 7 rejected" in err
    for number, problem in [
        (2, "truncated"),
        (3, "expected 4D"),
        (4, "NaN"),
        (5, "not a NIfTI"),
        (6, "zero-size"),
        (7, "Info.cfg is missing"),
        (8, "grid other than the image"),
    ]:
        lines = [line for line in err.splitlines() if f"patient00{number}" in line]
        assert any(problem in line for line in lines), (number, problem, err)
    assert open_cohort(out).subject_ids == ["patient001"]
    assert sorted(p.name for p in out.iterdir()) == ["cohort.json", "patient001"]  # no leftovers


@pytest.mark.slow
def test_bad_nifti_and_mnms2_inputs_exit_3_and_keep_good_subjects(tmp_path: Path, cli: Any) -> None:
    flat = tmp_path / "flat"
    for i in range(4):
        write_generic_subject(flat, f"s{i}", 80 + i, SMALL)
    _replace_nifti(flat / "s1_gt.nii.gz", np.zeros((64, 56, 6, 10), np.uint8))  # other grid
    inf = np.asarray(nib.load(flat / "s2.nii.gz").dataobj).astype(np.float32)
    inf[0, 0, 0, 0] = np.inf
    _replace_nifti(flat / "s2.nii.gz", inf)
    (flat / "s3.nii.gz").write_text("hello")
    result = cli(
        "preprocess",
        "--format",
        "nifti",
        "--input",
        str(flat),
        "--out",
        str(tmp_path / "flat_out"),
        "--image-size",
        "64",
        "--frames",
        "16",
    )
    assert result.returncode == 3, result.stderr
    assert "s1_gt.nii.gz" in result.stderr and "s2.nii.gz: 1 NaN/Inf" in result.stderr
    assert "s3.nii.gz: not a NIfTI" in result.stderr
    assert open_cohort(tmp_path / "flat_out").subject_ids == ["s0"]

    mnms = tmp_path / "MnM2"
    for n in (1, 2):
        write_mnms2_subject(mnms / "dataset", n, 90 + n, SMALL)
    write_mnms2_information(mnms, [(1, "NOR", "SIEMENS"), (2, "NOR", "SIEMENS")])
    _replace_nifti(mnms / "dataset" / "002" / "002_SA_ES_gt.nii.gz", np.zeros((8, 8, 5), np.uint8))
    result = cli(
        "preprocess",
        "--format",
        "mnms2",
        "--input",
        str(mnms),
        "--out",
        str(tmp_path / "mnms_out"),
        "--image-size",
        "64",
        "--frames",
        "16",
    )
    assert result.returncode == 3
    assert "002_SA_ES_gt.nii.gz: labels on a grid other than the image's" in result.stderr
    assert open_cohort(tmp_path / "mnms_out").subject_ids == ["001"]


def test_usage_errors_exit_2_and_empty_input_exits_3(tmp_path: Path, cli: Any) -> None:
    result = cli("preprocess", "--format", "dicom", "--input", str(tmp_path), "--out", "x")
    assert result.returncode == 2 and "--format 'dicom'" in result.stderr
    assert cli("preprocess", "--format", "acdc").returncode == 2  # missing options
    result = cli("preprocess", "--format", "acdc", "--input", str(tmp_path), "--out", "x")
    assert result.returncode == 3 and "no acdc subjects found" in result.stderr


def test_phantom_command_writes_a_cohort(tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "ph"
    result = cli(
        "phantom",
        "--out",
        str(out),
        "--subjects",
        "2",
        "--seed",
        "4",
        "--image-size",
        "32",
        "--frames",
        "8",
        "--vendor",
        "C",
    )
    assert result.returncode == 0, result.stderr
    cohort = open_cohort(out)
    assert cohort.subject_ids == ["phantom000", "phantom001"]
    subject = cohort.load("phantom001")
    assert subject.cine.shape == (32, 32, 6, 8) and subject.meta["vendor"] == "C"
    assert cli("phantom", "--out", str(out), "--vendor", "Q").returncode == 2
    tiny = tmp_path / "tiny"
    result = cli("phantom", "--out", str(tiny), "--subjects", "1", "--config", "tiny",
                  "--set", "data.frames=8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert open_cohort(tiny).load("phantom000").cine.shape == (32, 32, 6, 8)
