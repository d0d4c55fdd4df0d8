"""Memorization audit: planted near-copies flagged, fresh subjects pass, split integrity,
public audit.json without real-subject distances, the combiner over several sites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import signal

from fedcmr4d.audit.controls import NEAR_COPY_KINDS
from fedcmr4d.audit.memorization import (
    SiteAnswer,
    calibration_distances,
    combine_answers,
    full_path,
    run_audit,
    tail_p_values,
    tail_threshold,
)
from fedcmr4d.config import AuditConfig
from fedcmr4d.data.cohort import open_cohort, write_cohort_index, write_subject
from fedcmr4d.errors import AuditFailedError, InputError
from fedcmr4d.io import tree_hashes


@pytest.fixture(scope="module")
def planted_audit(cohorts: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("planted") / "audit.json"
    audit = run_audit(cohorts.planted, [cohorts.train], [cohorts.holdout], out, site="A")
    return {"audit": audit, "out": out, "full": json.loads(full_path(out).read_text())}


def test_every_planted_near_copy_is_flagged(cohorts: Any, planted_audit: dict[str, Any]):
    audit = planted_audit["audit"]
    assert set(cohorts.planted_kinds.values()) == set(NEAR_COPY_KINDS)
    flagged = {f["synthetic_id"]: f for f in audit["flagged"]}
    missed = sorted(set(cohorts.planted_kinds) - set(flagged))
    assert not missed, f"near-copies not flagged: {missed}"  # recall 1.00, flips/rotations too
    assert all(flagged[i]["site"] == "A" for i in flagged)
    assert audit["passed"] is False


def test_fresh_subjects_are_not_flagged(cohorts: Any, planted_audit: dict[str, Any]):
    fresh_ids = set(open_cohort(cohorts.fresh).subject_ids)
    assert not [f for f in planted_audit["audit"]["flagged"] if f["synthetic_id"] in fresh_ids]


def test_public_audit_holds_no_real_distance_or_id(cohorts: Any, planted_audit: dict[str, Any]):
    text = planted_audit["out"].read_text()
    html = planted_audit["out"].with_suffix(".html").read_text()
    detail = planted_audit["full"]["site_details"]["A"]
    for value in detail["holdout_to_train"][:5] + detail["synthetic_to_train"][-5:]:
        assert repr(value) not in text and f"{value:.6f}" not in html
    real_ids = [*open_cohort(cohorts.train).subject_ids, *open_cohort(cohorts.holdout).subject_ids]
    assert not any(i in text or i in html for i in real_ids)
    assert (
        "distances" not in planted_audit["audit"] and "site_details" not in planted_audit["audit"]
    )
    assert len(detail["holdout_to_train"]) == 20  # the full audit, the steward's, has them


def test_threshold_is_the_tail_model_of_the_holdout(cohorts: Any, planted_audit: dict[str, Any]):
    audit, full = planted_audit["audit"], planted_audit["full"]
    detail = full["site_details"]["A"]
    assert len(detail["train_leave_one_out"]) == 40 and min(detail["train_leave_one_out"]) > 0
    reference = calibration_distances(
        np.asarray(detail["holdout_to_train"]), np.asarray(detail["train_leave_one_out"])
    )
    assert reference.size == 60  # 20 holdout + 40 training subjects (leave one out)
    level = AuditConfig().copy_alpha / audit["n_synthetic"]
    assert audit["threshold"] == pytest.approx(tail_threshold(reference, level))
    assert tail_p_values(reference, np.array([audit["threshold"]]))[0] == pytest.approx(level)
    assert audit["files"] == tree_hashes(cohorts.planted)
    assert audit["method"]["name"] == "variant_shift_ncc_tail"


def _false_alarm_rate(draw: Any, n: int, level: float, repeats: int = 1000) -> float:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(repeats):
        x = draw(rng, n + 1)
        hits += int(tail_p_values(x[:n], x[n:])[0] < level)
    return hits / repeats


def test_tail_p_values_are_calibrated_for_a_heavy_lower_tail():
    # Weibull nearest distances (power-law lower tail): the log-normal/Student-t model gave a
    # rate of 0.031 here at level 0.01; the Weibull pivot is exact at any n.
    rate = _false_alarm_rate(lambda rng, k: 0.1 * rng.weibull(4.0, k), 10, 0.01)
    assert 0.003 <= rate <= 0.02, rate
    # lighter (log-normal) tails: conservative, never above the level
    rate = _false_alarm_rate(lambda rng, k: np.exp(rng.normal(-2.5, 0.3, k)), 10, 0.01)
    assert rate <= 0.01, rate


def test_tail_p_values_reach_the_level_exactly_at_the_threshold():
    reference = 0.1 * np.random.default_rng(3).weibull(4.0, 25)
    thresholds = [tail_threshold(reference, level) for level in (0.05, 1e-3, 1e-5)]
    assert thresholds[0] > thresholds[1] > thresholds[2] > 0
    for level, threshold in zip((0.05, 1e-3, 1e-5), thresholds, strict=True):
        assert tail_p_values(reference, np.array([threshold]))[0] == pytest.approx(level, rel=1e-6)
    p = tail_p_values(reference, np.array([0.0, reference.min(), 1.0]))
    assert p[0] < 1e-12 and 0 < p[1] < 0.5 and p[2] == pytest.approx(1.0)


def test_calibration_leaves_out_exact_training_duplicates():
    reference = calibration_distances(np.array([0.1, 0.2]), np.array([0.0, 0.15, 1e-12]))
    assert reference.tolist() == [0.1, 0.2, 0.15]


def test_cli_exit_codes_and_report(cohorts: Any, run_cli: Any, tmp_path: Path):
    copies = tmp_path / "copies"  # two exact copies of "training" subjects: must fail
    for subject in list(open_cohort(cohorts.holdout))[:2]:
        subject.subject_id = f"syn-{subject.subject_id}"
        write_subject(copies, subject)
    write_cohort_index(copies, ["syn-hold000", "syn-hold001"])
    code, text = run_cli(
        "audit", "--synthetic", copies, "--train", cohorts.holdout,
        "--holdout", cohorts.fresh, "--out", tmp_path / "copies.json",
    )  # fmt: skip
    assert code == 4 and "audit FAILED" in text
    code, text = run_cli(
        "audit", "--synthetic", cohorts.fresh, "--train", cohorts.train,
        "--holdout", cohorts.holdout, "--out", tmp_path / "fresh.json",
    )  # fmt: skip
    assert code == 0, text
    assert json.loads((tmp_path / "fresh.json").read_text())["passed"] is True
    assert "PASSED" in (tmp_path / "fresh.html").read_text()
    assert (tmp_path / "fresh-full.json").is_file()


def test_cli_refuses_overlapping_splits(cohorts: Any, run_cli: Any, tmp_path: Path):
    code, text = run_cli(
        "audit", "--synthetic", cohorts.fresh, "--train", cohorts.train,
        "--holdout", cohorts.train, "--out", tmp_path / "x.json",
    )  # fmt: skip
    assert code == 2 and "overlap" in text and "train000" in text
    renamed = tmp_path / "renamed"  # same cines under other ids: caught by the hashes
    for subject in list(open_cohort(cohorts.train))[:2]:
        subject.subject_id = f"other-{subject.subject_id}"
        write_subject(renamed, subject)
    write_cohort_index(renamed, ["other-train000", "other-train001"])
    code, text = run_cli(
        "audit", "--synthetic", cohorts.fresh, "--train", cohorts.train,
        "--holdout", renamed, "--out", tmp_path / "y.json",
    )  # fmt: skip
    assert code == 2 and "other-train000 = train train000" in text
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_cli_rejects_bad_override(cohorts: Any, run_cli: Any, tmp_path: Path):
    code, text = run_cli(
        "audit", "--synthetic", cohorts.fresh, "--train", cohorts.train, "--holdout",
        cohorts.holdout, "--out", tmp_path / "x.json", "--set", "audit.copy_alpha=2",
    )  # fmt: skip
    assert code == 2 and "audit.copy_alpha" in text


def _answer(site: str, flags: list[bool], bits: list[bool], **kw: Any) -> SiteAnswer:
    values: dict[str, Any] = {
        "site": site,
        "n_train": 20,
        "n_holdout": 10,
        "synthetic_ids": [f"s{i}" for i in range(len(flags))],
        "copy_flags": flags,
        "dcr_bits": bits,
        "threshold": 0.02,
        "level": 0.05 / len(flags),
        "calibrated": True,
        "method": {"grid": {}, "copy_alpha": 0.05},
        "membership": None,
    }
    return SiteAnswer(**{**values, **kw})


def test_combiner_names_the_flagging_site_and_refuses_mismatches():
    a = _answer("A", [False, True, False], [False, True, True])
    b = _answer("B", [False, False, False], [True, False, False])
    audit = combine_answers([a, b], config=AuditConfig(), files={})
    assert audit["flagged"] == [{"synthetic_id": "s1", "site": "A"}] and not audit["passed"]
    assert audit["n_train"] == 40 and audit["site_names"] == ["A", "B"]
    other = _answer("B", [False] * 3, [False] * 3, synthetic_ids=["x", "y", "z"])
    with pytest.raises(InputError, match="site B"):
        combine_answers([a, other], config=AuditConfig(), files={})


@pytest.mark.parametrize(
    "bad",
    [
        {"threshold": 0.0},
        {"threshold": None},
        {"threshold": 3.0},
        {"n_train": 0},
        {"copy_flags": [True]},
        {"copy_flags": [2, 0, 0]},
    ],
)
def test_implausible_answers_are_refused_naming_the_site(bad: dict[str, Any]):
    payload = {**_answer("liar", [False] * 3, [False] * 3).to_dict(), **bad}
    with pytest.raises(InputError, match="site liar"):
        SiteAnswer.from_dict(payload)


def test_uncalibrated_site_fails_the_audit():
    answer = _answer("tiny", [False], [False], calibrated=False, threshold=None, n_holdout=1)
    audit = combine_answers([answer], config=AuditConfig(), files={})
    assert not audit["passed"] and "tiny could not calibrate" in audit["reasons"][0]


@pytest.mark.parametrize(
    ("wins", "n", "passed", "p_value"),
    [
        (6, 6, True, (2 / 3) ** 6),  # the demo's size: 1.0 happens 9 % of the time by chance
        (15, 15, False, (2 / 3) ** 15),  # the same share from 15 subjects is memorization
        (14, 15, True, None),  # 0.933 > 2/3 + 0.2, but p = 0.019: not unlikely enough
        (35, 40, False, None),  # 0.875, p = 0.0025
        (300, 400, True, None),  # p ~ 1e-4, but 0.75 is within the tolerance: not material
        (9000, 10000, False, None),  # a release-sized cohort (no float overflow in the tail)
    ],
)
def test_dcr_fails_only_when_the_excess_is_material_and_unlikely_by_chance(
    wins: int, n: int, passed: bool, p_value: float | None
):
    site = _answer("A", [False] * n, [i < wins for i in range(n)], n_train=2 * n, n_holdout=n)
    audit = combine_answers([site], config=AuditConfig(), files={})
    assert audit["flagged"] == [] and audit["dcr_share"] == pytest.approx(wins / n)
    assert audit["passed"] is passed, audit["reasons"]
    if p_value:
        assert audit["dcr_p_value"] == pytest.approx(p_value)
    if not passed:
        assert "dcr_share" in audit["reasons"][0] and "binomial p" in audit["reasons"][0]


def test_real_subjects_of_another_geometry_are_compared_on_the_common_grid(
    cohorts: Any, tmp_path: Path
):
    """A training subject stored at 48 x 48, 8 slices, 24 frames; its 32 x 32 x 6 x 16 copy."""
    source = open_cohort(cohorts.train).load("train000")
    big = np.pad(source.cine, ((8, 8), (8, 8), (0, 0), (0, 0)))
    big = np.clip(signal.resample(big, 24, axis=3), 0, 1).astype(np.float32)
    train = tmp_path / "train-big"
    for subject in list(open_cohort(cohorts.train))[1:12]:
        subject.cine = np.pad(subject.cine, ((8, 8), (8, 8), (0, 0), (0, 0)))
        subject.labels = None
        write_subject(train, subject)
    source.cine, source.labels = big, None
    write_subject(train, source)
    write_cohort_index(train, [*open_cohort(cohorts.train).subject_ids[1:12], "train000"])
    synthetic = tmp_path / "synthetic"
    copy = open_cohort(cohorts.train).load("train000")
    copy.subject_id = "syn-copy"
    write_subject(synthetic, copy)
    write_cohort_index(synthetic, ["syn-copy"])
    audit = run_audit(synthetic, [train], [cohorts.holdout])
    assert [f["synthetic_id"] for f in audit["flagged"]] == ["syn-copy"]


def test_missing_training_cohort_is_an_input_error(cohorts: Any, tmp_path: Path):
    with pytest.raises(InputError, match="cohort.json"):
        run_audit(cohorts.fresh, [tmp_path / "nothing"], [cohorts.holdout])


def test_raise_on_fail_raises_audit_failed(cohorts: Any, tmp_path: Path):
    for subject in list(open_cohort(cohorts.train))[:3]:
        write_subject(tmp_path / "synthetic", subject)
    write_cohort_index(tmp_path / "synthetic", open_cohort(cohorts.train).subject_ids[:3])
    with pytest.raises(AuditFailedError, match="audit failed"):
        run_audit(tmp_path / "synthetic", [cohorts.train], [cohorts.holdout], raise_on_fail=True)
