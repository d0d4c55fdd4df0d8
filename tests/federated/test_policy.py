"""A hostile coordinator against a DP site: real ClientApp, real Flower messages, real trainer.

The coordinator controls the whole message (config YAML, rounds, weights). A site whose node
config sets a privacy policy refuses every message that breaks it: nothing trained, nothing
spent, no weights sent, and an error whose reason is the policy line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.client_app import app as client_app
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.federated.records import weights_to_record
from fedcmr4d.privacy.accounting import cohort_ledger_path
from fedcmr4d.privacy.policy import SitePolicy


@pytest.fixture
def dp_site(tmp_path: Path) -> dict[str, object]:
    cohort = tmp_path / "hospital-a"
    write_phantom_cohort(cohort, 4, seed=3, image_size=32, slices=6, frames=16)
    return {
        "cohort": str(cohort),
        "site-name": "hospital-a",
        "state-dir": str(tmp_path / "state"),
        "require-dp": True,
        "target-epsilon": 40.0,
        "min-noise-multiplier": 0.8,
        "max-grad-norm": 1.0,
        "accountant": "rdp",
        "max-local-steps": 4,
        "max-rounds": 3,
    }


def _message(overrides: list[str], kind: str = MessageType.TRAIN, server_round: int = 1):
    cfg = load_config("tiny-dp", overrides)
    config = ConfigRecord(
        {
            "stage": "autoencoder",
            "config-yaml": cfg.to_yaml(),
            "rounds-autoencoder": 1,
            "rounds-diffusion": 1,
            "server-round": server_round,
        }
    )
    arrays = weights_to_record(initial_weights("autoencoder", cfg))
    content = RecordDict({"arrays": arrays, "config": config})
    return Message(content, dst_node_id=7, message_type=kind)


def _send(node_config: dict[str, object], msg: Message) -> Message:
    context = Context(
        run_id=1, node_id=7, node_config=dict(node_config), state=RecordDict(), run_config={}
    )
    return client_app(msg, context)


def _epsilon(node_config: dict[str, object]) -> float:
    path = cohort_ledger_path(str(node_config["cohort"]))
    return json.loads(path.read_text())["epsilon"] if path.is_file() else 0.0


HOSTILE = [
    (
        ["privacy.enabled=false"],
        "site policy: require-dp: asked privacy.enabled=false, limit privacy.enabled=true",
    ),
    (["privacy.noise_multiplier=0.3"], "site policy: min-noise-multiplier: asked 0.3, limit 0.8"),
    (["privacy.max_grad_norm=5"], "site policy: max-grad-norm: asked 5.0, limit 1.0"),
    (["privacy.accountant=prv"], "site policy: accountant: asked prv, limit rdp"),
    (["train.autoencoder.steps=50"], "site policy: max-local-steps: asked 50, limit 4"),
]


@pytest.mark.parametrize(("overrides", "reason"), HOSTILE)
def test_hostile_message_is_refused_before_anything_is_spent(
    dp_site, flower_identity, overrides, reason
) -> None:
    reply = _send(dp_site, _message(overrides))
    assert reply.has_error() and not reply.has_content()  # no weights, no metrics
    assert reply.error.reason == reason
    assert _epsilon(dp_site) == 0.0
    assert not cohort_ledger_path(str(dp_site["cohort"])).exists()  # nothing trained or spent


def test_refusals_leave_a_spent_ledger_unchanged_and_a_compliant_round_trains(
    dp_site, flower_identity
) -> None:
    reply = _send(dp_site, _message([]))
    assert not reply.has_error()
    metrics = dict(reply.content.metric_records["metrics"])
    assert set(metrics) == {"num-examples", "epsilon", "delta"}  # no loss leaves a DP site
    assert dict(reply.content.config_records["privacy"]) == {"accountant": "rdp"}
    assert len(reply.content.array_records["arrays"]) > 0
    spent = _epsilon(dp_site)
    assert 0 < spent == pytest.approx(metrics["epsilon"])

    for overrides, reason in HOSTILE:
        refused = _send(dp_site, _message(overrides, server_round=2))
        assert refused.has_error() and refused.error.reason == reason
    late = _send(dp_site, _message([], server_round=4))  # past max-rounds = 3
    assert late.error.reason == "site policy: max-rounds: asked 4, limit 3"
    assert _epsilon(dp_site) == spent  # no refusal spent anything


def test_evaluation_at_a_dp_site_sends_only_the_count_whatever_the_coordinator_says(
    dp_site, flower_identity
) -> None:
    reply = _send(dp_site, _message(["privacy.enabled=false"], kind=MessageType.EVALUATE))
    assert not reply.has_error()
    assert set(reply.content.metric_records["metrics"]) == {"num-examples"}


def test_the_budget_is_the_sites_not_the_coordinators(dp_site, flower_identity) -> None:
    """The coordinator asks for a budget of 1e6; the site's own target-epsilon (0.01) holds."""
    small = {**dp_site, "target-epsilon": 0.01}
    reply = _send(small, _message(["privacy.target_epsilon=1000000"]))
    assert reply.has_error() and reply.error.reason.startswith("site error: budget (id ")
    assert _epsilon(small) == 0.0


def test_policy_keys_are_validated_and_require_dp_needs_the_sites_budget() -> None:
    with pytest.raises(ConfigError, match="require-dp = true needs this site's own target"):
        SitePolicy.from_node_config({"require-dp": True})
    with pytest.raises(ConfigError, match="max-grad-norm: must be a finite number > 0"):
        SitePolicy.from_node_config({"max-grad-norm": -1.0})
    with pytest.raises(ConfigError, match="accountant: choose from"):
        SitePolicy.from_node_config({"accountant": "moments"})
    policy = SitePolicy.from_node_config({"require-dp": "true", "target-epsilon": 4})
    assert policy.require_dp and policy.target_epsilon == 4.0
