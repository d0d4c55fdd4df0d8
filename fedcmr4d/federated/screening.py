"""The coordinator's screening of one round's replies, before any of them is aggregated.

Left out, each with a reason in the round's history row: error replies (a site crashed, timed
out, ran out of budget, or refused the message under its privacy policy: ``site policy: ...``),
replies without weights or metrics, and updates failing
:func:`fedcmr4d.federated.validation.validate_updates` (num-examples, structure, finiteness,
absolute and relative norm). What a round needs to count at all is the quorum
``federation.min_accepted`` (:mod:`fedcmr4d.federated.coordinator`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message

from fedcmr4d.config import FederationConfig
from fedcmr4d.federated.messages import by_site, site_name, site_only
from fedcmr4d.federated.records import record_to_numpy
from fedcmr4d.federated.strategies import WEIGHT_KEY
from fedcmr4d.federated.validation import ValidationReport, validate_updates
from fedcmr4d.privacy.policy import PREFIX as POLICY_PREFIX


@dataclass
class Screened:
    """One round's replies sorted into accepted, rejected and refused."""

    accepted: list[Message]
    rejected: list[dict[str, str]]
    report: ValidationReport
    refused: list[dict[str, str]] = field(default_factory=list)


def error_entry(reply: Message) -> dict[str, str]:
    """``{"site", "reason"}`` of an error reply; a policy refusal keeps its policy line."""
    label = f"node {reply.metadata.src_node_id}"
    reason = str(reply.error.reason)
    if reason.startswith(POLICY_PREFIX):
        return {"site": label, "reason": reason}
    return {"site": label, "reason": f"site error: {reason.removeprefix('site error: ')}"}


def screen_replies(
    replies: list[Message],
    arrays: ArrayRecord,
    *,
    fed: FederationConfig,
    declared_examples: MutableMapping[str, float] | None = None,
) -> Screened:
    """Split replies into those fit to aggregate and those left out (with a reason each).

    Replies are taken in site order, not arrival order, so that the aggregate (a float sum
    whose result depends on its order) is the same in every run of the same federation.

    Args:
        declared_examples: site name -> num-examples declared in its first accepted round;
            updated in place with the sites accepted for the first time.
    """
    declared = declared_examples if declared_examples is not None else {}
    rejected: list[dict[str, str]] = []
    refused: list[dict[str, str]] = []
    candidates: dict[str, Message] = {}
    for reply in sorted(replies, key=by_site):
        if reply.has_error():
            entry = error_entry(reply)
            rejected.append(entry)
            if entry["reason"].startswith(POLICY_PREFIX):
                refused.append(entry)
        elif "arrays" not in reply.content.array_records or "metrics" not in reply.content:
            rejected.append({"site": site_name(reply), "reason": "reply lacks arrays or metrics"})
        else:
            candidates[site_name(reply)] = reply
    updates = []
    for label, reply in candidates.items():
        examples = reply.content.metric_records["metrics"].get(WEIGHT_KEY, 0.0)
        weights = record_to_numpy(reply.content.array_records["arrays"])
        updates.append((label, weights, float(examples)))  # type: ignore[arg-type]
    by_label = {
        label: declared[site_only(reply)]
        for label, reply in candidates.items()
        if site_only(reply) in declared
    }
    report = validate_updates(
        record_to_numpy(arrays),
        updates,
        max_norm_ratio=fed.max_update_norm_ratio,
        max_update_norm=fed.max_update_norm,
        max_num_examples=fed.max_num_examples,
        declared_examples=by_label,
    )
    rejected += [{"site": r.site, "reason": r.reason} for r in report.rejected]
    accepted = [candidates[label] for label in report.accepted]
    for reply in accepted:
        metrics = reply.content.metric_records["metrics"]
        declared.setdefault(site_only(reply), float(metrics[WEIGHT_KEY]))  # type: ignore[arg-type]
    return Screened(accepted, rejected, report, refused)


def site_privacy(replies: list[Message]) -> dict[str, dict[str, Any]]:
    """Site name -> ``{"epsilon", "delta", "accountant"}`` from the training replies under DP.

    Taken from every reply that carries them, accepted or not: a site whose update was left
    out still spent its budget.
    """
    out: dict[str, dict[str, Any]] = {}
    for reply in replies:
        if reply.has_error() or "privacy" not in reply.content.config_records:
            continue
        metrics = reply.content.metric_records.get("metrics")
        if metrics is None or "epsilon" not in metrics:
            continue
        out[site_only(reply)] = {
            "epsilon": float(metrics["epsilon"]),  # type: ignore[arg-type]
            "delta": float(metrics.get("delta", 0.0)),  # type: ignore[arg-type]
            "accountant": str(reply.content.config_records["privacy"].get("accountant", "?")),
        }
    return out
