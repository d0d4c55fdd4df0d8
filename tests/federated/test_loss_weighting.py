"""Loss-weighted aggregation: factors, their bound against a lying site, and Flower's average."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedcmr4d.config import FederationConfig, load_config
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.coordinator import aggregate_accepted
from fedcmr4d.federated.loss_weighting import (
    AGGREGATION_KEY,
    loss_factors,
    set_aggregation_weights,
)
from fedcmr4d.federated.records import numpy_to_record, record_to_numpy
from fedcmr4d.federated.strategies import build_strategy


def test_factor_is_the_loss_over_the_median_to_the_power_q() -> None:
    factors = loss_factors({"a": 0.2, "b": 0.25, "c": 0.4}, power=2.0, cap=100.0)
    assert factors["b"] == pytest.approx(1.0)  # the median site
    assert factors["a"] == pytest.approx((0.2 / 0.25) ** 2)
    assert factors["c"] == pytest.approx((0.4 / 0.25) ** 2)


def test_power_zero_is_fedavg() -> None:
    assert loss_factors({"a": 0.1, "b": 9.0}, power=0.0, cap=4.0) == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("claimed", [1e300, 1e9, float("inf")])
def test_a_site_overstating_its_loss_gets_at_most_cap_times_its_weight(claimed: float) -> None:
    factors = loss_factors({"honest-1": 0.2, "honest-2": 0.21, "liar": claimed}, power=4, cap=4)
    if math.isfinite(claimed):
        assert factors["liar"] == pytest.approx(4.0)
        assert factors["honest-2"] == pytest.approx(1.0)  # the median is an honest site's
    else:  # not a usable loss at all: the liar is weighed as FedAvg would
        assert factors["liar"] == 1.0
    assert all(1 / 4 <= factors[s] <= 4 for s in ("honest-1", "honest-2"))
    assert factors["honest-1"] < factors["honest-2"]


def test_in_a_federation_of_two_a_liar_outweighs_the_other_by_at_most_cap_squared() -> None:
    factors = loss_factors({"honest": 0.2, "liar": 1e12}, power=4, cap=4)
    assert factors == {"honest": pytest.approx(0.25), "liar": pytest.approx(4.0)}


def test_a_site_understating_its_loss_is_bounded_below_too() -> None:
    factors = loss_factors({"a": 0.2, "b": 0.2, "c": 1e-300}, power=4, cap=4)
    assert factors["c"] == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [None, float("nan"), -1.0, 0.0, "high"])
def test_a_site_without_a_usable_loss_keeps_its_fedavg_weight(bad: object) -> None:
    factors = loss_factors({"dp-site": bad, "a": 0.2, "b": 0.4}, power=1, cap=4)  # type: ignore[dict-item]
    assert factors["dp-site"] == 1.0
    # the others are still weighed against each other (median of their two losses: 0.3)
    assert factors["a"] == pytest.approx(0.2 / 0.3)
    assert factors["b"] == pytest.approx(0.4 / 0.3)


def test_one_loss_alone_weighs_nobody() -> None:
    assert loss_factors({"a": 0.5, "dp": None}, power=4, cap=4) == {"a": 1.0, "dp": 1.0}


def _reply(node: int, site: str, weight: float, metrics: dict[str, float]) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            "arrays": numpy_to_record({"w": np.full(3, weight, np.float32)}),
            "metrics": MetricRecord(metrics),  # type: ignore[arg-type]
            "site": ConfigRecord({"name": site}),
        }
    )
    return Message(content, reply_to=sent)  # its sender is the node the message went to


def test_flowers_average_follows_the_factors_not_a_weight_the_site_sent(
    task_identity: None,
) -> None:
    """A hostile site puts a huge aggregation weight of its own into its reply: overwritten."""
    replies = [
        _reply(11, "site-A", 1.0, {"loss": 0.2, "num-examples": 10.0}),
        _reply(12, "site-B", 2.0, {"loss": 0.4, "num-examples": 10.0}),
        _reply(13, "site-C", 5.0, {"loss": 0.2, "num-examples": 30.0, AGGREGATION_KEY: 1e9}),
    ]
    factors = set_aggregation_weights(replies, power=1.0, cap=4.0)
    assert list(factors.values()) == pytest.approx([1.0, 2.0, 1.0])
    weights = np.array([10.0 * 1.0, 10.0 * 2.0, 30.0 * 1.0])
    expected = (weights @ np.array([1.0, 2.0, 5.0])) / weights.sum()
    arrays, metrics = build_strategy(FederationConfig()).aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert record_to_numpy(arrays)["w"] == pytest.approx(np.full(3, expected), rel=1e-6)
    # the reported loss stays the sites' mean weighted by subjects; the weight is not reported
    assert metrics["loss"] == pytest.approx((0.2 * 10 + 0.4 * 10 + 0.2 * 30) / 50)
    assert metrics["num-examples"] == 50
    assert AGGREGATION_KEY not in metrics


@pytest.mark.parametrize(
    "strategy", ["fedavg", "fedadam", "fedprox", "fedtrimmedavg", "fedmedian", "krum"]
)
def test_every_strategy_aggregates_by_the_weight_the_coordinator_sets(
    strategy: str, task_identity: None
) -> None:
    """Each strategy is built to read the aggregation weight; none may miss it in a reply."""
    replies = [
        _reply(11 + i, f"site-{i}", float(i), {"loss": 0.1 * (i + 1), "num-examples": 8.0})
        for i in range(5)
    ]
    set_aggregation_weights(replies, power=4.0, cap=4.0)
    fed = FederationConfig(strategy=strategy, min_nodes=2)  # type: ignore[arg-type]
    built = build_strategy(fed)
    if strategy == "fedadam":  # FedOpt keeps the arrays it sent (configure_train sets them)
        built.current_arrays = {"w": np.zeros(3, np.float32)}  # type: ignore[attr-defined]
    arrays, metrics = built.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert np.isfinite(record_to_numpy(arrays)["w"]).all()
    # Krum keeps one site's update and its metrics; the others report all five sites
    assert metrics["num-examples"] == (8 if strategy == "krum" else 40)


def test_without_loss_weighting_the_average_is_fedavg(task_identity: None) -> None:
    replies = [
        _reply(11, "site-A", 1.0, {"loss": 0.1, "num-examples": 10.0}),
        _reply(12, "site-B", 4.0, {"loss": 0.9, "num-examples": 30.0, AGGREGATION_KEY: 0.0}),
    ]
    assert set(set_aggregation_weights(replies, power=0.0, cap=4.0).values()) == {1.0}
    arrays, _ = build_strategy(FederationConfig()).aggregate_train(1, replies)
    assert arrays is not None
    assert record_to_numpy(arrays)["w"] == pytest.approx(np.full(3, (10 + 4 * 30) / 40))


def test_a_dp_site_without_a_loss_is_averaged_in_and_the_others_still_weighed(
    task_identity: None,
) -> None:
    """The coordinator's round: a DP site sends no loss, and trimming to common keys comes
    only after the weights are set (else no site would be loss-weighted)."""

    def replies() -> list[Message]:
        return [
            _reply(11, "site-A", 1.0, {"loss": 0.2, "num-examples": 10.0}),
            _reply(12, "site-B", 2.0, {"loss": 0.4, "num-examples": 10.0}),
            _reply(13, "dp-site", 3.0, {"num-examples": 10.0, "epsilon": 1.0, "delta": 1e-5}),
        ]

    fed = FederationConfig(loss_weighting={"segmenter": 1.0})
    arrays, metrics, factors = aggregate_accepted(
        build_strategy(fed), 1, replies(), fed=fed, stage="segmenter"
    )
    assert list(factors.values()) == pytest.approx([0.2 / 0.3, 0.4 / 0.3, 1.0])
    weights = 10.0 * np.array([0.2 / 0.3, 0.4 / 0.3, 1.0])
    expected = (weights @ np.array([1.0, 2.0, 3.0])) / weights.sum()
    assert arrays is not None and metrics is not None
    assert record_to_numpy(arrays)["w"] == pytest.approx(np.full(3, expected), rel=1e-6)
    assert "loss" not in metrics  # not every site sent one: no mean loss is reported
    # the diffusion stage is not named in loss_weighting: FedAvg there
    _, _, plain = aggregate_accepted(build_strategy(fed), 1, replies(), fed=fed, stage="diffusion")
    assert set(plain.values()) == {1.0}


def test_loss_weighting_config_is_checked_at_load() -> None:
    cfg = load_config("demo", [])
    assert cfg.federation.loss_power("segmenter") > 0
    assert cfg.federation.loss_power("diffusion") == 0
    with pytest.raises(ConfigError, match="segmentr"):
        load_config("tiny", ["federation.loss_weighting={segmentr: 4}"])
    with pytest.raises(ConfigError, match="within"):
        load_config("tiny", ["federation.loss_weighting={segmenter: -1}"])
    with pytest.raises(ConfigError, match="loss_weighting_cap"):
        load_config("tiny", ["federation.loss_weighting_cap=0.5"])
