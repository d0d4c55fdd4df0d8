"""``fedcmr4d utility``: three training arms scored on held-out real subjects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcmr4d.config import load_config
from fedcmr4d.data.cohort import (
    LABEL_LV,
    LABEL_MYO,
    LABEL_RV,
    Subject,
    write_cohort_index,
    write_subject,
)
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.evaluate.segmenter import _draw
from fedcmr4d.evaluate.utility import ARMS, dice_per_structure, mixed_weights, run_utility

SET = [
    "evaluate.segmenter_steps=25",
    "evaluate.segmenter_batch_size=4",
    "evaluate.segmenter_features=[8,8,16,16,32,8]",
]


def _cohorts(root: Path) -> tuple[Path, Path, Path]:
    geo = {"image_size": 32, "slices": 2, "frames": 8}
    train = write_phantom_cohort(root / "train", 2, 1, **geo).root
    synthetic = write_phantom_cohort(root / "synthetic", 2, 2, id_prefix="syn", **geo).root
    test = write_phantom_cohort(root / "test", 2, 3, id_prefix="test", **geo).root
    return train, synthetic, test


def test_dice_per_structure_ignores_unlabelled_voxels() -> None:
    truth = np.array([LABEL_LV, LABEL_LV, LABEL_MYO, 0, 255, 255], dtype=np.uint8)
    pred = np.array([LABEL_LV, 0, LABEL_MYO, LABEL_MYO, LABEL_RV, LABEL_LV], dtype=np.uint8)
    dice = dice_per_structure(pred, truth)
    assert dice["lv"] == pytest.approx(2 / 3)
    assert dice["myo"] == pytest.approx(2 / 3)
    assert np.isnan(dice["rv"])  # RV only where the truth is unlabelled
    assert dice_per_structure(truth, truth)["lv"] == 1.0


def test_utility_arms_metrics_and_report(tmp_path: Path) -> None:
    train, synthetic, test = _cohorts(tmp_path)
    metrics = run_utility(train, synthetic, test, tmp_path / "out", cfg=load_config("tiny", SET))
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(written["utility"]) == set(ARMS)
    assert written["n_real_train"] == 2 and written["n_synthetic"] == 2
    assert written["n_real_test"] == 2
    for arm in ARMS:
        row = written["utility"][arm]
        for key in ("dice_lv", "dice_myo", "dice_rv"):
            assert 0.0 <= row[key] <= 1.0
        assert row["ef_mae"] >= 0 and row["n_ef"] == 2
    pooled = written["utility"]["real+synthetic"]
    assert pooled["train_frames"] == (
        written["utility"]["real"]["train_frames"] + written["utility"]["synthetic"]["train_frames"]
    )
    assert pooled["real_share"] == pytest.approx(0.5)  # equal frame counts, pooled evenly
    assert pooled["dice_mean_sd"] is None and len(pooled["per_seed"]) == 1  # one seed
    assert written["utility"]["real"]["per_seed"][0]["seed"] == written["segmenter"]["seed"]
    html = Path(metrics["report"]).read_text()
    assert "real+synthetic" in html and "Dice LV" in html and "share of real draws" in html


def test_synthetic_without_labels_names_the_first_subject(tmp_path: Path, run_cli) -> None:
    train, _, test = _cohorts(tmp_path)
    bare = tmp_path / "bare"
    rng = np.random.default_rng(0)
    for sid in ("b0", "b1"):
        write_subject(bare, Subject(sid, rng.uniform(0, 1, (32, 32, 2, 8)).astype(np.float32)))
    write_cohort_index(bare, ["b0", "b1"])
    with pytest.raises(InputError, match="labels.nii.gz: missing") as err:
        run_utility(train, bare, test, tmp_path / "o", cfg=load_config("tiny", SET))
    assert str(bare / "b0" / "labels.nii.gz") in str(err.value)
    code, out = run_cli(
        "utility",
        "--real-train",
        train,
        "--synthetic",
        bare,
        "--real-test",
        test,
        "--out",
        tmp_path / "o2",
    )
    assert code == 3 and "b0" in out


def test_test_subject_without_labels_is_refused_before_any_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, synthetic, test = _cohorts(tmp_path)
    (test / "test001" / "labels.nii.gz").unlink()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("an arm trained before the test cohort was checked")

    monkeypatch.setattr("fedcmr4d.evaluate.utility.fit_segmenter", no_training)
    with pytest.raises(InputError, match="real test subject needs its reference labels") as err:
        run_utility(train, synthetic, test, tmp_path / "o", cfg=load_config("tiny", SET))
    assert str(test / "test001" / "labels.nii.gz") in str(err.value)
    assert not (tmp_path / "o").exists()


def test_real_share_sets_how_often_arm_c_draws_real_frames() -> None:
    cfg = load_config("tiny", [*SET, "evaluate.utility_real_share=0.9"])
    weights = mixed_weights(10, 30, cfg.evaluate)
    assert weights is not None and len(weights) == 40
    assert sum(weights[:10]) == pytest.approx(0.9) and sum(weights[10:]) == pytest.approx(0.1)
    assert mixed_weights(10, 30, load_config("tiny", SET).evaluate) is None
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor(_draw(40, 4000, gen, weights))
    assert 0.87 < float((draws < 10).float().mean()) < 0.93
    with pytest.raises(ConfigError, match="utility_real_share"):
        load_config("tiny", ["evaluate.utility_real_share=1.5"])


def test_zero_weight_frames_are_never_drawn() -> None:
    gen = torch.Generator().manual_seed(1)
    draws = set(_draw(4, 500, gen, [1.0, 0.0, 2.0, 0.0]))
    assert draws == {0, 2}


def test_utility_records_the_real_share(tmp_path: Path) -> None:
    train, synthetic, test = _cohorts(tmp_path)
    cfg = load_config("tiny", [*SET, "evaluate.utility_real_share=0.75"])
    metrics = run_utility(train, synthetic, test, tmp_path / "out", cfg=cfg)
    assert metrics["utility"]["real+synthetic"]["real_share"] == 0.75
    assert metrics["segmenter"]["utility_real_share"] == 0.75


def test_seeds_average_each_arm_and_pair_its_gap_to_real(tmp_path: Path, run_cli) -> None:
    train, synthetic, test = _cohorts(tmp_path)
    sets = [item for pair in (("--set", s) for s in SET) for item in pair]
    args = ["--real-train", train, "--synthetic", synthetic, "--real-test", test]
    code, out = run_cli("utility", *args, "--out", tmp_path / "out", *sets, "--seeds", "2")
    assert code == 0, out
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    seed = load_config("tiny", SET).seed
    assert written["segmenter"]["seeds"] == [seed, seed + 1]
    real = written["utility"]["real"]["per_seed"]
    assert [r["seed"] for r in real] == [seed, seed + 1]
    assert real[0]["dice_mean"] != real[1]["dice_mean"]  # the seed reaches the segmenter
    for arm in ARMS:
        row = written["utility"][arm]
        dice = [r["dice_mean"] for r in row["per_seed"]]
        assert row["dice_mean"] == pytest.approx(np.mean(dice))
        assert row["dice_mean_sd"] == pytest.approx(np.std(dice, ddof=1))
        assert row["ef_mae"] == pytest.approx(np.mean([r["ef_mae"] for r in row["per_seed"]]))
    for arm in ("synthetic", "real+synthetic"):
        row = written["utility"][arm]
        gaps = [r["dice_mean"] - a["dice_mean"] for r, a in zip(row["per_seed"], real, strict=True)]
        assert [r["dice_mean_vs_real"] for r in row["per_seed"]] == pytest.approx(gaps)
        assert row["dice_mean_vs_real"] == pytest.approx(np.mean(gaps))
        assert row["seeds_at_or_above_real"] == sum(g >= 0 for g in gaps)
    assert "of 2" in (tmp_path / "out" / "report.html").read_text()
    code, out = run_cli("utility", *args, "--out", tmp_path / "o0", *sets, "--seeds", "0")
    assert code == 2 and "--seeds" in out
    with pytest.raises(ConfigError, match="utility_seeds"):
        load_config("tiny", ["evaluate.utility_seeds=0"])


def _run(seed: int, dice: float) -> dict:
    return {
        "seed": seed,
        "dice_lv": dice,
        "dice_myo": dice,
        "dice_rv": dice,
        "dice_mean": dice,
        "ef_mae": 2.0 + seed,
        "n_ef": 4,
        "final_loss": 0.1,
    }


def test_paired_gaps_count_the_seeds_an_arm_matches_real() -> None:
    from fedcmr4d.evaluate.utility import add_paired_gaps, mean_over_seeds
    from fedcmr4d.federated.demo import utility_rows

    utility = {
        "real": mean_over_seeds([_run(0, 0.90), _run(1, 0.80)]),
        "real+synthetic": mean_over_seeds([_run(0, 0.93), _run(1, 0.79)]),
    }
    add_paired_gaps(utility)
    both = utility["real+synthetic"]
    assert both["dice_mean"] == pytest.approx(0.86) and both["ef_mae"] == pytest.approx(2.5)
    assert both["dice_mean_sd"] == pytest.approx(np.std([0.93, 0.79], ddof=1))
    assert [r["dice_mean_vs_real"] for r in both["per_seed"]] == pytest.approx([0.03, -0.01])
    assert both["dice_mean_vs_real"] == pytest.approx(0.01)
    assert both["seeds_at_or_above_real"] == 1
    assert "seeds_at_or_above_real" not in utility["real"]
    rows = dict((r[0], r[1:]) for r in utility_rows(utility))
    assert rows["utility: real+synthetic"][0].startswith("Dice 0.86 +- ")
    assert "vs real +0.010, at or above it in 1 of 2 seeds" in rows["utility: real+synthetic"][1]
