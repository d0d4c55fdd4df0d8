"""Labelling a synthetic cohort with the segmenter: files, ED/ES/EF, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedcmr4d.config import load_config
from fedcmr4d.data.cohort import (
    LABEL_LV,
    LABELS_FILE,
    Subject,
    open_cohort,
    write_cohort_index,
    write_subject,
)
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.evaluate.segmenter import train_segmenter
from fedcmr4d.pipelines.labelling import (
    cohort_is_dp,
    ed_es_from_labels,
    label_cohort,
    require_labels,
)

SEG_SET = [
    "evaluate.segmenter_steps=30",
    "evaluate.segmenter_batch_size=4",
    "evaluate.segmenter_features=[8,8,16,16,32,8]",
]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    real = write_phantom_cohort(root / "real", 3, 5, image_size=32, slices=2, frames=8)
    train_segmenter(real, root / "segmenter", load_config("tiny", SEG_SET))
    return root / "segmenter"


def _unlabelled(root: Path, n: int = 2, size: int = 32, provenance: dict | None = None) -> Path:
    """Phantom cines written as a 'synthetic' cohort: no labels, no ED/ES in meta."""
    src = write_phantom_cohort(root / "src", n, 77, image_size=size, slices=2, frames=8)
    out = root / "synthetic"
    for subject in src:
        write_subject(
            out, Subject(subject.subject_id, subject.cine, subject.affine, subject.frame_ms)
        )
    write_cohort_index(out, src.subject_ids, frames=8, provenance=provenance or {"seed": 1})
    return out


def test_ed_es_from_a_label_map() -> None:
    labels = np.zeros((4, 4, 1, 5), dtype=np.uint8)
    for t, area in enumerate([9, 6, 2, 5, 8]):
        labels[..., t].flat[:area] = LABEL_LV
    ed, es, edv, esv, ef = ed_es_from_labels(labels, (1.0, 1.0, 10.0))
    assert (ed, es) == (0, 2)
    assert edv == pytest.approx(0.09) and esv == pytest.approx(0.02)
    assert ef == pytest.approx(100 * 7 / 9)


def test_label_cohort_writes_labels_meta_and_provenance(tmp_path: Path, segmenter: Path) -> None:
    cohort_dir = _unlabelled(tmp_path)
    with pytest.raises(InputError, match="labels.nii.gz: missing"):
        require_labels(open_cohort(cohort_dir))
    result = label_cohort(cohort_dir, segmenter)
    cohort = open_cohort(cohort_dir)
    require_labels(cohort)
    assert len(result.subjects) == 2
    for row in result.subjects:
        subject = cohort.load(row.subject_id)
        assert subject.labels is not None and subject.labels.shape == subject.cine.shape
        assert set(np.unique(subject.labels)) <= {0, 1, 2, 3}  # every frame labelled, no 255
        ed, es, _, _, ef = ed_es_from_labels(subject.labels, subject.zooms)
        assert (subject.meta["ed_frame"], subject.meta["es_frame"]) == (ed, es)
        assert subject.meta["ef"] == pytest.approx(ef, abs=1e-3)
        assert subject.meta["labels_source"]["segmenter_sha256"] == result.segmenter_sha256
        grid = nib.load(str(cohort_dir / row.subject_id / LABELS_FILE))
        np.testing.assert_allclose(grid.affine, subject.affine)
        assert grid.header.get_zooms()[3] == pytest.approx(subject.frame_ms)
    labels_prov = cohort.index["provenance"]["labels"]
    assert labels_prov["method"] == "segmenter" and labels_prov["n_labelled"] == 2
    assert cohort.index["provenance"]["seed"] == 1  # the rest of the provenance is kept
    assert not list(cohort_dir.rglob(".tmp-*"))


def test_segmenter_of_another_grid_is_refused_naming_the_file(
    tmp_path: Path, segmenter: Path
) -> None:
    cohort_dir = _unlabelled(tmp_path, n=1, size=48)
    with pytest.raises(ConfigError, match="trained on") as err:
        label_cohort(cohort_dir, segmenter)
    assert str(segmenter / "meta.json") in str(err.value)
    assert not (cohort_dir / open_cohort(cohort_dir).subject_ids[0] / LABELS_FILE).exists()

    # Without frame_shape in its meta the segmenter's config.yaml grid decides.
    seg = tmp_path / "seg-old"
    shutil.copytree(segmenter, seg)
    meta = json.loads((seg / "meta.json").read_text())
    del meta["frame_shape"]
    (seg / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="data.image_size 32") as err:
        label_cohort(cohort_dir, seg)
    assert str(seg / "config.yaml") in str(err.value)


def test_segmenter_with_other_classes_is_refused(tmp_path: Path, segmenter: Path) -> None:
    seg = tmp_path / "seg"
    shutil.copytree(segmenter, seg)
    meta = json.loads((seg / "meta.json").read_text())
    meta["num_classes"] = 3
    (seg / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="num_classes 3") as err:
        label_cohort(_unlabelled(tmp_path, n=1), seg)
    assert str(seg / "meta.json") in str(err.value)


def test_dp_cohort_is_not_labelled_by_a_non_dp_segmenter(tmp_path: Path, segmenter: Path) -> None:
    dp = {"privacy": {"sites": {"site-A": {"diffusion": {"epsilon": 8.0, "delta": 1e-5}}}}}
    cohort_dir = _unlabelled(tmp_path, n=1, provenance=dp)
    assert cohort_is_dp(open_cohort(cohort_dir).index)
    with pytest.raises(ConfigError, match="trained without DP") as err:
        label_cohort(cohort_dir, segmenter)
    assert str(segmenter / "meta.json") in str(err.value)
    assert not list(cohort_dir.rglob(LABELS_FILE))
    # A segmenter recorded as DP-trained would be accepted.
    seg = tmp_path / "seg-dp"
    shutil.copytree(segmenter, seg)
    meta = json.loads((seg / "meta.json").read_text())
    meta["privacy"] = {"dp": True}
    (seg / "meta.json").write_text(json.dumps(meta))
    assert len(label_cohort(cohort_dir, seg).subjects) == 1
    assert not cohort_is_dp({"provenance": {"privacy": {"sites": {"a": {"x": {}}}}}})


def test_label_command(tmp_path: Path, segmenter: Path, run_cli) -> None:
    cohort_dir = _unlabelled(tmp_path, n=1)
    code, out = run_cli("label", "--synthetic", cohort_dir, "--segmenter", segmenter)
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["n_labelled"] == 1
    code, out = run_cli("label", "--synthetic", cohort_dir, "--segmenter", tmp_path / "none")
    assert code == 3 and "meta.json" in out
