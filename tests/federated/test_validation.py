"""The coordinator's update checks: structure, finiteness and norm outliers."""

from __future__ import annotations

import numpy as np
import pytest

from fedcmr4d.federated.validation import structural_problem, update_norm, validate_updates


def _model(value: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "a.weight": np.full((3, 2), value, dtype=np.float32),
        "a.bias": np.full((3,), value, dtype=np.float32),
    }


def _moved(delta: float) -> dict[str, np.ndarray]:
    return {k: v + np.float32(delta) for k, v in _model().items()}


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda m: m.pop("a.bias"), "wrong keys"),
        (lambda m: m.__setitem__("extra", np.zeros(1, np.float32)), "wrong keys"),
        (lambda m: m.__setitem__("a.bias", np.zeros(4, np.float32)), "shape (4,)"),
        (lambda m: m.__setitem__("a.bias", np.zeros(3, np.float64)), "dtype float64"),
        (lambda m: m["a.weight"].__setitem__((0, 0), np.nan), "NaN or Inf"),
        (lambda m: m["a.weight"].__setitem__((1, 1), np.inf), "NaN or Inf"),
    ],
)
def test_structural_problems_are_named(spoil, expected) -> None:
    update = _moved(0.1)
    spoil(update)
    problem = structural_problem(_model(), update)
    assert problem is not None and expected in problem


def test_fitting_update_has_no_problem_and_its_norm() -> None:
    assert structural_problem(_model(), _moved(0.5)) is None
    assert update_norm(_model(), _moved(0.5)) == pytest.approx(0.5 * np.sqrt(9))


def test_huge_norm_rejected_even_with_two_sites() -> None:
    report = validate_updates(
        _model(), [("ok", _moved(0.1), 4.0), ("huge", _moved(1e3), 4.0)], max_norm_ratio=10
    )
    assert report.accepted == ["ok"]
    assert [r.site for r in report.rejected] == ["huge"]
    assert "median" in report.rejected[0].reason


def test_similar_norms_all_accepted_and_bad_ones_left_out() -> None:
    nan = _moved(0.1)
    nan["a.bias"][0] = np.nan
    updates = [
        ("s1", _moved(0.1), 3.0),
        ("s2", _moved(0.3), 5.0),
        ("s3", _moved(0.2), 2.0),
        ("nan", nan, 3.0),
        ("empty", _moved(0.1), 0.0),
    ]
    report = validate_updates(_model(), updates, max_norm_ratio=10)
    assert sorted(report.accepted) == ["s1", "s2", "s3"]
    assert sorted(r.site for r in report.rejected) == ["empty", "nan"]


def test_single_site_is_not_compared_with_anyone() -> None:
    report = validate_updates(_model(), [("only", _moved(50.0), 1.0)], max_norm_ratio=2)
    assert report.accepted == ["only"]


def _global(value: float = 1.0) -> dict[str, np.ndarray]:
    return _model(value)  # L2 norm = value * 3


def test_absolute_bar_holds_for_a_single_reply() -> None:
    start = _global(1.0)
    huge = {k: v + np.float32(10.0) for k, v in start.items()}
    small = {k: v + np.float32(0.1) for k, v in start.items()}
    report = validate_updates(start, [("only", huge, 2.0)], max_norm_ratio=10, max_update_norm=1)
    assert report.accepted == [] and "global model's norm" in report.rejected[0].reason
    report = validate_updates(start, [("only", small, 2.0)], max_norm_ratio=10, max_update_norm=1)
    assert report.accepted == ["only"]


def test_num_examples_capped_and_held_to_the_first_declaration() -> None:
    start = _global(1.0)
    moved = {k: v + np.float32(0.1) for k, v in start.items()}
    report = validate_updates(
        start,
        [("greedy", moved, 1e12), ("liar", moved, 40.0), ("honest", moved, 4.0)],
        max_norm_ratio=10,
        max_num_examples=1000,
        declared_examples={"liar": 4.0, "honest": 4.0},
    )
    assert report.accepted == ["honest"]
    reasons = {r.site: r.reason for r in report.rejected}
    assert "1e+12" in reasons["greedy"] and "declared 4" in reasons["liar"]
