"""Strategy factory, metric aggregation and strategy state for resume."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
)

from fedcmr4d.config import FederationConfig
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.strategies import (
    aggregate_metrics,
    build_strategy,
    restore_strategy_state,
    strategy_state,
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("fedavg", FedAvg),
        ("fedadam", FedAdam),
        ("fedprox", FedProx),
        ("fedtrimmedavg", FedTrimmedAvg),
        ("fedmedian", FedMedian),
        ("krum", Krum),
    ],
)
def test_factory_builds_each_strategy(name: str, kind: type) -> None:
    strategy = build_strategy(FederationConfig(strategy=name, min_nodes=2))
    assert type(strategy) is kind
    assert strategy.min_available_nodes == 2  # type: ignore[attr-defined]


def test_central_dp_was_removed_and_its_keys_are_refused() -> None:
    """Central DP is gone (docs/privacy.md): a config still asking for it is an error."""
    from fedcmr4d.config import load_config

    for key in ("central_dp=adaptive", "central_dp_clipping_norm=0.7"):
        with pytest.raises(ConfigError, match="central_dp"):
            load_config("tiny", [f"federation.{key}"])
    assert type(build_strategy(FederationConfig(strategy="fedavg"))) is FedAvg


def test_deployment_defaults_need_two_sites() -> None:
    fed = FederationConfig()
    assert fed.min_nodes >= 2 and fed.min_accepted >= 2


def _reply(loss: float, examples: float, epsilon: float) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord(),
            "metrics": MetricRecord({"loss": loss, "num-examples": examples, "epsilon": epsilon}),
        }
    )


def test_metrics_weighted_mean_sum_and_max_epsilon() -> None:
    out = aggregate_metrics([_reply(1.0, 1, 2.0), _reply(4.0, 3, 0.5)], "num-examples")
    assert out["loss"] == pytest.approx((1.0 * 1 + 4.0 * 3) / 4)
    assert out["num-examples"] == 4
    assert out["epsilon"] == 2.0


def test_fedadam_moments_survive_save_and_restore() -> None:
    fed = FederationConfig(strategy="fedadam", min_nodes=1)
    strategy = build_strategy(fed)
    assert strategy.m_t is None  # type: ignore[attr-defined]  # FedOpt's own moment attributes
    strategy.m_t = {"w": np.array([0.1, 0.2], np.float32)}  # type: ignore[attr-defined]
    strategy.v_t = {"w": np.array([0.3, 0.4], np.float32)}  # type: ignore[attr-defined]
    arrays, scalars = strategy_state(strategy)
    assert set(arrays) == {"outer/m_t/w", "outer/v_t/w"}
    fresh = build_strategy(fed)
    restore_strategy_state(fresh, arrays, scalars)
    assert np.array_equal(fresh.m_t["w"], strategy.m_t["w"])  # type: ignore[attr-defined]
    assert np.array_equal(fresh.v_t["w"], strategy.v_t["w"])  # type: ignore[attr-defined]
