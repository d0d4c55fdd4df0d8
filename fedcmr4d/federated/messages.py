"""What the coordinator sends with every message, and how it names the sites that reply."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message

from fedcmr4d.config import Config
from fedcmr4d.federated.settings import TRAIN_STAGES, RunSettings


def message_config(settings: RunSettings, stage: str, cfg: Config, cfg_yaml: str) -> ConfigRecord:
    """The ``config`` record of every message of a stage: stage, resolved YAML, planned rounds.

    A training stage the run does not plan is sent as 0 rounds: a DP site derives its noise from
    the whole plan, and would otherwise keep budget back for a stage that never comes.

    ``cohort-root``/``state-root`` are simulation hints (a deployed site ignores them: its node
    config names its cohort).
    """
    planned = settings.stage_list()
    rounds = {
        f"rounds-{name}": settings.rounds(name, cfg) if name in planned else 0
        for name in TRAIN_STAGES
    }
    return ConfigRecord(
        {
            "stage": stage,
            "config-yaml": cfg_yaml,
            **rounds,
            "cohort-root": settings.cohort_root,
            "state-root": settings.state_root,
        }
    )


def site_only(reply: Message) -> str:
    """The site name a reply gives (``?`` when it gives none, e.g. an error reply)."""
    if reply.has_error():
        return "?"
    site = reply.content.config_records.get("site")
    return str(site["name"]) if site is not None and "name" in site else "?"


def site_name(reply: Message) -> str:
    """``<site> (node <id>)``: the label of a reply in logs and metrics."""
    return f"{site_only(reply)} (node {reply.metadata.src_node_id})"


def by_site(reply: Message) -> tuple[str, int]:
    """Sort key: the site's name (stable across runs; node ids are drawn anew), then node id."""
    return ("" if reply.has_error() else site_only(reply), reply.metadata.src_node_id)


def common_metric_keys(replies: list[Message]) -> None:
    """Trim every reply's metrics to the keys all have (Flower's strategies require equal keys)."""
    records = [r.content.metric_records["metrics"] for r in replies]
    common = set.intersection(*(set(m.keys()) for m in records))
    for record in records:
        for key in [k for k in record if k not in common]:
            del record[key]
