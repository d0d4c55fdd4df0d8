"""Segmenter: DP-safe architecture, training on labelled frames only, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedcmr4d.config import load_config
from fedcmr4d.data.cohort import Subject, open_cohort, write_cohort_index, write_subject
from fedcmr4d.errors import InputError
from fedcmr4d.evaluate.features import FeatureNetwork
from fedcmr4d.evaluate.segmenter import (
    build_segmenter,
    labelled_frames,
    load_segmenter,
    segment_cine,
    train_segmenter,
)


def _cohort(root: Path, labelled: bool) -> Path:
    rng = np.random.default_rng(0)
    ids = []
    for i in range(2):
        cine = rng.uniform(0, 1, (20, 24, 2, 4)).astype(np.float32)
        labels = None
        if labelled:
            labels = np.full(cine.shape, 255, dtype=np.uint8)
            labels[..., 0] = (cine[..., 0] > 0.5).astype(np.uint8)  # only frame 0 labelled
        write_subject(root, Subject(f"s{i}", cine, np.diag([1.0, 1.0, 10.0, 1.0]), 40.0, labels))
        ids.append(f"s{i}")
    write_cohort_index(root, ids)
    return root


def test_no_batchnorm_and_no_buffers() -> None:
    model = build_segmenter(features=[8, 8, 16, 32, 64, 8])
    kinds = {type(m).__name__ for m in model.modules()}
    assert not any("BatchNorm" in k for k in kinds) and "GroupNorm" in kinds
    assert list(model.buffers()) == []


def test_labelled_frames_skips_unlabelled_frames(tmp_path: Path) -> None:
    cohort = open_cohort(_cohort(tmp_path / "c", labelled=True))
    images, labels, subjects = labelled_frames(cohort)
    assert len(images) == 2 * 2 and subjects == 2  # 2 subjects x 2 slices x frame 0 only
    assert all(not np.all(lab == 255) for lab in labels)


def test_unlabelled_cohort_is_refused_naming_it(tmp_path: Path) -> None:
    cohort = open_cohort(_cohort(tmp_path / "c", labelled=False))
    with pytest.raises(InputError, match="no labelled frames") as err:
        labelled_frames(cohort)
    assert str(tmp_path / "c") in str(err.value)


def test_train_save_load_segment_and_featurise(tmp_path: Path) -> None:
    cfg = load_config(
        "tiny", ["evaluate.segmenter_steps=2", "evaluate.segmenter_features=[8,8,16,32,64,8]"]
    )
    cohort = open_cohort(_cohort(tmp_path / "c", labelled=True))
    result = train_segmenter(cohort, tmp_path / "seg", cfg)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "config.yaml",
        "meta.json",
        "segmenter.safetensors",
    ]
    model, meta = load_segmenter(tmp_path / "seg")
    assert meta["features"] == [8, 8, 16, 32, 64, 8] and meta["train_frames"] == 4
    cine = cohort.load("s0").cine  # 20 x 24: not a multiple of 16, padded and cropped
    labels = segment_cine(model, cine)
    assert labels.shape == cine.shape and labels.dtype == np.uint8 and labels.max() <= 3
    net = FeatureNetwork(tmp_path / "seg" / "segmenter.safetensors")
    feats = net.cine(cine)
    assert feats.shape == (2, 4, net.dim) and net.dim == 2 * (8 + 8) + 32 + 64
    assert np.isfinite(feats).all() and len(net.sha256) == 64
    model2, _ = load_segmenter(tmp_path / "seg")
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="meta.json: missing"):
        load_segmenter(tmp_path)
    with pytest.raises(InputError, match=r"weights\.safetensors: feature-network weights file"):
        FeatureNetwork(tmp_path / "weights.safetensors")
    with pytest.raises(InputError, match=r"segmenter\.safetensors: feature-network weights file"):
        FeatureNetwork(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="bad.safetensors"):
        FeatureNetwork(bad)
