"""Build the Flower strategy named in ``federation.strategy``, and save/restore its state.

FedAvg weights sites by ``num-examples``, times a loss factor with ``federation.loss_weighting``
(:mod:`fedcmr4d.federated.loss_weighting`; every strategy is built to read that weight).
FedAdam (server-side adaptive optimiser) helps when sites differ by vendor; FedProx sends
``proximal-mu`` to the sites. FedTrimmedAvg, FedMedian and Krum are robust aggregators.

There is no central (server-side) DP option: it was removed (docs/privacy.md, "Central DP was
removed"). Flower's wrappers assumed ``min_nodes`` sampled sites whatever was aggregated, took
the weighted mean (which breaks their sensitivity bound) and reported no ε; and the privacy a
hospital needs is its patients', which each site's own DP-SGD gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from fedcmr4d.config import FederationConfig
from fedcmr4d.federated.loss_weighting import AGGREGATION_KEY

WEIGHT_KEY = "num-examples"
# Metrics that are a budget spent, not a mean: the consortium reports the worst site.
MAX_METRICS = ("epsilon", "delta")
SUM_METRICS = (WEIGHT_KEY,)


def weighted_mean(rows: list[dict[str, float]], key: str, weight_key: str) -> float:
    """Mean of ``key`` over ``rows`` weighted by ``weight_key``; a row without ``key`` counts 0.

    The one weighted mean of per-site metrics (training replies and stage evaluations).
    """
    total = sum(r.get(weight_key, 0.0) for r in rows) or 1.0
    return sum(r.get(key, 0.0) * r.get(weight_key, 0.0) for r in rows) / total


def aggregate_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Mean of losses weighted by ``num-examples``, sum of examples, maximum of privacy spent.

    Args:
        contents: reply RecordDicts, each with a ``metrics`` MetricRecord.
        weight_key: what Flower passes (its ``weighted_by_key``, the aggregation weight). Not
            used: the means stay weighted by ``num-examples``, so a loss-weighted round reports
            the sites' mean loss like any other round; the aggregation weight is left out.
    """
    del weight_key
    records = [
        {
            k: float(v)  # type: ignore[arg-type]
            for k, v in c.metric_records["metrics"].items()
            if k != AGGREGATION_KEY
        }
        for c in contents
        if "metrics" in c.metric_records
    ]
    keys = sorted({k for r in records for k in r})
    out: dict[str, float] = {}
    for key in keys:
        values = [r[key] for r in records if key in r]
        if key in MAX_METRICS:
            out[key] = max(values)
        elif key in SUM_METRICS:
            out[key] = sum(values)
        else:
            out[key] = weighted_mean(records, key, WEIGHT_KEY)
    return MetricRecord(out)  # type: ignore[arg-type]


def build_strategy(fed: FederationConfig) -> Strategy:
    """The strategy for one training stage (training rounds only).

    Flower's own per-round evaluation is off: the coordinator evaluates each stage's final
    model itself (``coordinator.evaluate_stage``), and Flower's would weight evaluate replies
    by the aggregation weight, which only training replies carry.

    Args:
        fed: the ``federation`` config section.
    """
    common: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_nodes,
        "min_evaluate_nodes": fed.min_nodes,
        "min_available_nodes": fed.min_nodes,
        "weighted_by_key": AGGREGATION_KEY,  # num-examples x loss factor, set by the coordinator
        "train_metrics_aggr_fn": aggregate_metrics,
        "evaluate_metrics_aggr_fn": aggregate_metrics,
    }
    makers: dict[str, Callable[[], Strategy]] = {
        "fedavg": lambda: FedAvg(**common),
        "fedadam": lambda: FedAdam(**common, eta=fed.server_lr, eta_l=fed.server_lr),
        "fedprox": lambda: FedProx(**common, proximal_mu=fed.proximal_mu),
        "fedtrimmedavg": lambda: FedTrimmedAvg(**common, beta=fed.trimmed_beta),
        "fedmedian": lambda: FedMedian(**common),
        "krum": lambda: Krum(**common, num_malicious_nodes=fed.krum_malicious),
    }
    return makers[fed.strategy]()


# Attributes that carry a strategy's memory between rounds: FedOpt moments (and a wrapper's
# clipping norm, if one is ever used again). Everything else is rebuilt from the config.
_ARRAY_STATE = ("m_t", "v_t")
_SCALAR_STATE = ("clipping_norm",)


def _layers(strategy: Strategy) -> list[tuple[str, Strategy]]:
    layers = [("outer", strategy)]
    inner = getattr(strategy, "strategy", None)
    if isinstance(inner, Strategy):
        layers.append(("inner", inner))
    return layers


def strategy_state(strategy: Strategy) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Arrays (``<layer>/<attr>/<param>``) and scalars that resume a strategy mid-stage."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, float] = {}
    for layer, obj in _layers(strategy):
        for attr in _ARRAY_STATE:
            value = getattr(obj, attr, None)
            if isinstance(value, dict):
                for name, array in value.items():
                    arrays[f"{layer}/{attr}/{name}"] = np.asarray(array)
        for attr in _SCALAR_STATE:
            value = getattr(obj, attr, None)
            if isinstance(value, int | float):
                scalars[f"{layer}/{attr}"] = float(value)
    return arrays, scalars


def restore_strategy_state(
    strategy: Strategy, arrays: dict[str, np.ndarray], scalars: dict[str, float]
) -> None:
    """Put back what :func:`strategy_state` saved (same config, same layers)."""
    for layer, obj in _layers(strategy):
        for attr in _ARRAY_STATE:
            prefix = f"{layer}/{attr}/"
            part = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            if part:
                setattr(obj, attr, part)
        for attr in _SCALAR_STATE:
            key = f"{layer}/{attr}"
            if key in scalars:
                setattr(obj, attr, scalars[key])
