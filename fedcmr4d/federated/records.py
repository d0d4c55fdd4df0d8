"""Conversion between the trainer's weight dicts and Flower records, and message sizes.

The trainer exchanges ``dict[str, Tensor]`` of float parameters only (no buffers, see
DESIGN.md Privacy model); Flower carries them as an :class:`~flwr.app.ArrayRecord`. Keeping the
conversion here means only ``fedcmr4d.federated`` imports ``flwr``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord

MetricValue = int | float


def weights_to_record(weights: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Wrap a weight dict in an ArrayRecord, keeping key order, shapes and dtypes.

    Args:
        weights: parameter name -> tensor (any shape; float32 in practice).

    Returns:
        An ArrayRecord with one :class:`~flwr.app.Array` per key (numpy serialisation).
    """
    record = ArrayRecord()
    for name, tensor in weights.items():
        record[name] = Array(tensor.detach().cpu().contiguous().numpy())
    return record


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unpack an ArrayRecord into numpy arrays (copies, so the record can be dropped)."""
    return {name: np.array(array.numpy(), copy=True) for name, array in record.items()}


def record_to_weights(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Unpack an ArrayRecord into tensors for ``StageTrainer.set_weights``."""
    return numpy_to_weights(record_to_numpy(record))


def numpy_to_weights(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tensors sharing the arrays' memory (no copy), same names and dtypes."""
    return {name: torch.from_numpy(value) for name, value in arrays.items()}


def numpy_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Wrap numpy arrays (e.g. a checkpoint read back) in an ArrayRecord."""
    record = ArrayRecord()
    for name, value in arrays.items():
        record[name] = Array(np.ascontiguousarray(value))
    return record


def cast_like(record: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``record`` with each array in the dtype of the same key in ``reference``.

    Server-side optimisers (FedAdam) return float64 arrays; sending those would double the
    message and make every site's float32 reply fail the dtype check of the next round.
    """
    arrays = record_to_numpy(record)
    dtypes = {name: np.dtype(array.dtype) for name, array in reference.items()}
    return numpy_to_record(
        {k: v.astype(dtypes.get(k, v.dtype), copy=False) for k, v in arrays.items()}
    )


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of array payload in a record (what one direction of one message carries)."""
    return sum(len(array.data) for array in record.values())


def parameter_count(record: ArrayRecord) -> int:
    """Number of scalar parameters in a record."""
    return sum(int(np.prod(array.shape)) for array in record.values())


def metrics_to_record(metrics: Mapping[str, float | int]) -> MetricRecord:
    """Keep the finite numeric entries of a metrics dict (Flower rejects other types)."""
    clean: dict[str, MetricValue] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            clean[key] = int(value)
        elif isinstance(value, int):
            clean[key] = value
        elif isinstance(value, float) and np.isfinite(value):
            clean[key] = value
        elif isinstance(value, np.generic | torch.Tensor):
            number = float(value)
            if np.isfinite(number):
                clean[key] = number
    return MetricRecord(clean)  # type: ignore[arg-type]
