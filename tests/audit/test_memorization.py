"""Memorization audit: planted near-copies flagged, fresh subjects not, federated combiner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import signal

from fedcmr4d.audit.memorization import (
    SiteAuditResult,
    SyntheticSet,
    combine_site_results,
    prepare_synthetic,
    run_audit,
    site_audit,
)
from fedcmr4d.config import AuditConfig
from fedcmr4d.data.cohort import open_cohort, write_cohort_index, write_subject
from fedcmr4d.errors import AuditFailedError, InputError
from fedcmr4d.io import tree_hashes


@pytest.fixture(scope="module")
def synthetic(cohorts: Any) -> SyntheticSet:
    return prepare_synthetic(cohorts.planted, AuditConfig())


@pytest.fixture(scope="module")
def site_a(cohorts: Any, synthetic: SyntheticSet) -> SiteAuditResult:
    return site_audit(synthetic, [cohorts.train], [cohorts.holdout], site="A")


@pytest.fixture(scope="module")
def planted_audit(site_a: SiteAuditResult, synthetic: SyntheticSet) -> dict[str, Any]:
    """The local audit is the combiner over one site."""
    return combine_site_results([site_a], config=AuditConfig(), files=synthetic.files)


def test_every_planted_near_copy_is_flagged(cohorts: Any, planted_audit: dict[str, Any]):
    flagged = {f["synthetic_id"]: f for f in planted_audit["flagged"]}
    missed = sorted(set(cohorts.planted_kinds) - set(flagged))
    assert not missed, f"near-copies not flagged: {missed}"
    assert all(flagged[i]["distance"] < planted_audit["threshold"] for i in flagged)
    assert all(flagged[i]["site"] == "A" for i in flagged)
    assert planted_audit["passed"] is False


def test_fresh_subjects_are_rarely_flagged(cohorts: Any, planted_audit: dict[str, Any]):
    fresh_ids = set(open_cohort(cohorts.fresh).subject_ids)
    false_flags = [f for f in planted_audit["flagged"] if f["synthetic_id"] in fresh_ids]
    assert len(false_flags) <= 0.05 * len(fresh_ids), false_flags


def test_threshold_is_the_holdout_percentile(planted_audit: dict[str, Any]):
    holdout = planted_audit["distances"]["holdout_to_train"]
    assert len(holdout) == 20
    assert planted_audit["threshold"] == pytest.approx(float(np.percentile(holdout, 1.0)))
    assert planted_audit["method"]["percentile"] == 1.0
    assert planted_audit["dcr_expected"] == pytest.approx(40 / 60)
    assert "only 20 holdout subjects" in planted_audit["warnings"][0]


def test_audit_json_lists_every_file(cohorts: Any, planted_audit: dict[str, Any]):
    assert planted_audit["files"] == tree_hashes(cohorts.planted)
    assert planted_audit["n_synthetic"] == len(open_cohort(cohorts.planted))
    reloaded = json.loads(json.dumps(planted_audit))
    assert reloaded["method"]["name"] == "shift_invariant_ncc"


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
    assert code == 4 and "audit failed" in text
    code, text = run_cli(
        "audit", "--synthetic", cohorts.fresh, "--train", cohorts.train,
        "--holdout", cohorts.holdout, "--out", tmp_path / "fresh.json",
    )  # fmt: skip
    assert code == 0, text
    assert json.loads((tmp_path / "fresh.json").read_text())["passed"] is True
    page = (tmp_path / "fresh.html").read_text()
    assert "PASSED" in page
    assert page.count("data:image/png;base64,") == 1  # the histogram, nothing else


def test_cli_rejects_bad_override(cohorts: Any, run_cli: Any, tmp_path: Path):
    code, text = run_cli(
        "audit", "--synthetic", cohorts.fresh, "--train", cohorts.train, "--holdout",
        cohorts.holdout, "--out", tmp_path / "x.json", "--set", "audit.percentile=80",
    )  # fmt: skip
    assert code == 2 and "audit.percentile" in text


def test_sites_report_only_distances_and_the_combiner_names_the_site(
    cohorts: Any, synthetic: SyntheticSet, site_a: SiteAuditResult
):
    config = AuditConfig()
    site_b = site_audit(synthetic, [cohorts.fresh], [], site="B")  # B trained on "fresh"
    wire = [json.dumps(r.to_dict()) for r in (site_a, site_b)]
    for text in wire:
        assert "train0" not in text and "hold0" not in text  # no real subject ids leave
    results = [SiteAuditResult.from_dict(json.loads(t)) for t in wire]
    audit = combine_site_results(results, config=config, files=synthetic.files)
    sites = {f["synthetic_id"]: f["site"] for f in audit["flagged"]}
    assert all(sites[i] == "A" for i in cohorts.planted_kinds)
    assert all(sites[i] == "B" for i in open_cohort(cohorts.fresh).subject_ids)
    assert audit["sites"] == [
        {"site": "A", "n_train": 40, "n_holdout": 20},
        {"site": "B", "n_train": 20, "n_holdout": 0},
    ]


def test_combiner_refuses_mismatched_sites(synthetic: SyntheticSet, site_a: SiteAuditResult):
    config, n = AuditConfig(), len(site_a.synthetic_ids)
    other = SiteAuditResult(**{**site_a.to_dict(), "site": "B", "synthetic_ids": ["x"] * n})
    with pytest.raises(InputError, match="site B"):
        combine_site_results([site_a, other], config=config, files=synthetic.files)
    no_holdout = SiteAuditResult(**{**site_a.to_dict(), "n_holdout": 0, "holdout_to_train": []})
    with pytest.raises(InputError, match="no holdout"):
        combine_site_results([no_holdout], config=config, files=synthetic.files)


def test_real_subjects_of_another_geometry_are_compared_on_the_common_grid(
    cohorts: Any, tmp_path: Path
):
    """A training subject stored at 48 x 48, 8 slices, 24 frames; its 32 x 32 x 6 x 16 copy."""
    source = open_cohort(cohorts.train).load("train000")
    big = np.pad(source.cine, ((8, 8), (8, 8), (1, 1), (0, 0)))
    big = np.clip(signal.resample(big, 24, axis=3), 0, 1).astype(np.float32)
    train = tmp_path / "train-big"
    for subject in open_cohort(cohorts.holdout):  # unrelated real subjects, big geometry too
        subject.cine = np.pad(subject.cine, ((8, 8), (8, 8), (1, 1), (0, 0)))
        subject.labels = None
        write_subject(train, subject)
    source.cine, source.labels = big, None
    write_subject(train, source)
    write_cohort_index(train, [*open_cohort(cohorts.holdout).subject_ids, "train000"])
    synthetic = tmp_path / "synthetic"
    copy = open_cohort(cohorts.train).load("train000")
    copy.subject_id = "syn-copy"
    write_subject(synthetic, copy)
    write_cohort_index(synthetic, ["syn-copy"])
    audit = run_audit(synthetic, [train], [cohorts.fresh])
    assert [f["synthetic_id"] for f in audit["flagged"]] == ["syn-copy"]
    assert audit["flagged"][0]["distance"] < 1e-3


def test_missing_training_cohort_is_an_input_error(cohorts: Any, tmp_path: Path):
    with pytest.raises(InputError, match="cohort.json"):
        run_audit(cohorts.fresh, [tmp_path / "nothing"], [cohorts.holdout])


def test_raise_on_fail_raises_audit_failed(cohorts: Any, tmp_path: Path):
    copy = open_cohort(cohorts.fresh).load("fresh000")
    write_subject(tmp_path / "synthetic", copy)
    write_cohort_index(tmp_path / "synthetic", ["fresh000"])
    with pytest.raises(AuditFailedError, match="audit failed"):
        run_audit(tmp_path / "synthetic", [cohorts.fresh], [cohorts.holdout], raise_on_fail=True)


def _dcr_site(wins: int, n_synthetic: int, n_train: int, n_holdout: int) -> SiteAuditResult:
    """Hand-made distances: every synthetic subject far above the threshold (0.1), the first
    ``wins`` of them nearer to a training subject than to a holdout one."""
    return SiteAuditResult(
        site="A",
        n_train=n_train,
        n_holdout=n_holdout,
        holdout_to_train=[0.1] * n_holdout,
        synthetic_ids=[f"s{i}" for i in range(n_synthetic)],
        synthetic_to_train=[0.5 if i < wins else 0.6 for i in range(n_synthetic)],
        synthetic_to_holdout=[0.55] * n_synthetic,
    )


@pytest.mark.parametrize(
    ("wins", "n", "passed", "p_value"),
    [
        (6, 6, True, (2 / 3) ** 6),  # the demo's size: 1.0 happens 9 % of the time by chance
        (5, 6, True, 6 * (2 / 3) ** 5 / 3 + (2 / 3) ** 6),
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
    site = _dcr_site(wins, n, n_train=2 * n, n_holdout=n)  # dcr_expected 2/3
    audit = combine_site_results([site], config=AuditConfig(), files={})
    assert audit["flagged"] == [] and audit["dcr_share"] == pytest.approx(wins / n)
    assert audit["passed"] is passed, audit["reasons"]
    assert (
        audit["dcr_p_value"] == pytest.approx(p_value) if p_value else 0 <= audit["dcr_p_value"] < 1
    )
    if not passed:
        assert "dcr_share" in audit["reasons"][0] and "binomial p" in audit["reasons"][0]
    no_power = [w for w in audit["warnings"] if "cannot fail" in w]
    assert bool(no_power) is (n < 12), audit["warnings"]
    if no_power:
        assert "sample at least 12" in no_power[0]  # (2/3) ** 12 = 0.0077 < 0.01 < (2/3) ** 11


def test_dcr_alpha_is_validated_and_recorded():
    site = _dcr_site(35, 40, n_train=80, n_holdout=40)
    lenient = combine_site_results([site], config=AuditConfig(dcr_alpha=1e-9), files={})
    assert lenient["passed"] and lenient["method"]["dcr_alpha"] == 1e-9
    with pytest.raises(ValueError, match="dcr_alpha"):
        AuditConfig(dcr_alpha=0)
