"""Weight dicts <-> Flower ArrayRecords, byte counts, metric cleaning."""

from __future__ import annotations

import math

import numpy as np
import torch

from fedcmr4d.federated.records import (
    cast_like,
    metrics_to_record,
    numpy_to_record,
    parameter_count,
    record_nbytes,
    record_to_numpy,
    record_to_weights,
    weights_to_record,
)


def test_round_trip_keeps_order_shapes_dtypes_values() -> None:
    weights = {"b.w": torch.randn(4, 3, 2), "a.b": torch.arange(5, dtype=torch.float32)}
    record = weights_to_record(weights)
    back = record_to_weights(record)
    assert list(back) == ["b.w", "a.b"]
    for key, value in weights.items():
        assert back[key].dtype == value.dtype
        assert torch.equal(back[key], value)
    again = numpy_to_record(record_to_numpy(record))
    assert np.array_equal(record_to_numpy(again)["b.w"], weights["b.w"].numpy())


def test_bytes_and_parameter_count() -> None:
    record = weights_to_record({"w": torch.zeros(10, 10), "b": torch.zeros(10)})
    assert parameter_count(record) == 110
    assert record_nbytes(record) >= 110 * 4
    assert record_nbytes(record) < 110 * 4 + 1024  # numpy header only


def test_metrics_keep_finite_numbers_only() -> None:
    record = metrics_to_record(
        {"loss": 0.5, "steps": 3, "bad": math.nan, "t": torch.tensor(2.0), "ok": True}
    )
    assert dict(record) == {"loss": 0.5, "steps": 3, "t": 2.0, "ok": 1}


def test_cast_like_restores_the_models_dtypes() -> None:
    reference = weights_to_record({"w": torch.zeros(3), "n": torch.zeros(2, dtype=torch.int64)})
    aggregated = numpy_to_record({"w": np.ones(3, np.float64), "n": np.ones(2, np.float64)})
    back = record_to_numpy(cast_like(aggregated, reference))
    assert back["w"].dtype == np.float32 and back["n"].dtype == np.int64
    assert np.array_equal(back["w"], np.ones(3, np.float32))
