"""Flower ClientApp: one site's side of the federation (Message API).

Handlers:
    ``train``: local steps of the stage named in the message, from the global weights.
    ``evaluate``: the global model's losses on the site's holdout subjects.
    ``query.audit``: the site's audit answer (docs/privacy.md, "The audit protocol"): per
        synthetic subject a copy flag and a DCR bit, its threshold, counts and membership
        aggregates; never a real-subject distance.

Every message carries ``config`` (stage, the coordinator's resolved YAML config and, in
simulation, ``cohort-root``/``state-root``) and ``arrays`` (global weights); stage-2 messages
also carry the digest of the aggregated stage-1 model (``autoencoder-ref``), with which each
site encodes its own data to latents locally, and the model's arrays (``autoencoder``) the first
time a site needs it (see :mod:`fedcmr4d.federated.stage1_delivery`).

Before training, every message is checked against the site's own privacy policy (node config;
:mod:`fedcmr4d.privacy.policy`). What a reply may carry, and how errors are reported (a
category and an id, never the exception's text), is decided in one place for every handler:
:func:`fedcmr4d.federated.outbound.outbound_mod`, installed on the whole app. Outside it,
:func:`fedcmr4d.federated.memory.release_memory_mod` hands the heap a message freed back to the
operating system (a site process handles every round of every stage, then the audit).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcmr4d.config import Config, config_from_dict
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated import site as site_ops
from fedcmr4d.federated.memory import release_memory_mod
from fedcmr4d.federated.outbound import outbound_mod
from fedcmr4d.federated.records import metrics_to_record, record_to_weights, weights_to_record
from fedcmr4d.federated.settings import TRAIN_STAGES, SiteSettings
from fedcmr4d.federated.stage1_delivery import site_autoencoder

app = ClientApp(mods=[release_memory_mod, outbound_mod])


def _job(msg: Message, context: Context) -> tuple[str, Config, SiteSettings, Any]:
    """Stage, site-adjusted config, site settings and stage-1 weights of a message."""
    config = msg.content.config_records["config"]
    stage = str(config["stage"])
    if stage not in TRAIN_STAGES:
        raise ConfigError(f"message config: unknown stage {stage!r}")
    cfg = config_from_dict(yaml.safe_load(str(config["config-yaml"])), "coordinator config")
    site = SiteSettings.resolve(dict(context.node_config), dict(config))
    autoencoder = site_autoencoder(msg, site.state_dir)
    return stage, site.apply(cfg), site, autoencoder


def _reply(msg: Message, site: SiteSettings, **records: Any) -> Message:
    content = RecordDict({**records, "site": ConfigRecord({"name": site.name})})
    return Message(content, reply_to=msg)


def _privacy_record(cfg: Config, site: SiteSettings) -> dict[str, ConfigRecord]:
    """``{"privacy": {"accountant"}}`` for a reply under DP (the coordinator records it)."""
    if not site.policy.dp_required(cfg):
        return {}
    return {"privacy": ConfigRecord({"accountant": cfg.privacy.accountant})}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally from the global weights and send back weights and metrics."""
    stage, cfg, site, autoencoder = _job(msg, context)
    global_weights = record_to_weights(msg.content.array_records["arrays"])
    config = msg.content.config_records["config"]
    rounds = {
        name: int(config[f"rounds-{name}"])  # type: ignore[arg-type]
        for name in TRAIN_STAGES
        if f"rounds-{name}" in config
    }
    weights, metrics = site_ops.train_round(
        stage,
        cfg,
        site,
        global_weights,
        autoencoder,
        rounds=rounds,
        server_round=int(config["server-round"]),  # type: ignore[arg-type]
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
    )
    return _reply(
        msg,
        site,
        arrays=weights_to_record(weights),
        metrics=metrics_to_record(metrics),
        **_privacy_record(cfg, site),
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights on this site's holdout subjects."""
    stage, cfg, site, autoencoder = _job(msg, context)
    global_weights = record_to_weights(msg.content.array_records["arrays"])
    metrics = site_ops.evaluate_round(stage, cfg, site, global_weights, autoencoder)
    return _reply(msg, site, metrics=metrics_to_record(metrics), **_privacy_record(cfg, site))


@app.query("audit")
def audit(msg: Message, context: Context) -> Message:
    """The site's answer to an audit query (:mod:`fedcmr4d.audit.site_answer`): copy flags and
    DCR bits per synthetic subject, threshold, counts and membership aggregates only."""
    from fedcmr4d.audit.site_answer import answer_from_message_parts

    config = msg.content.config_records["config"]
    cfg = config_from_dict(yaml.safe_load(str(config["config-yaml"])), "coordinator config")
    site = SiteSettings.resolve(dict(context.node_config), dict(config))
    cfg = site.apply(cfg)
    train_ids, holdout_ids = site_ops.site_subjects(site, cfg)
    files = msg.content.config_records.get("synthetic-files")
    result = answer_from_message_parts(
        query_json=str(config["audit-query"]),
        names=None if files is None else [str(n) for n in files["names"]],  # type: ignore[union-attr]
        blobs=None if files is None else list(files["blobs"]),  # type: ignore[arg-type]
        model_cfg=cfg,
        diffusion=record_to_weights(msg.content.array_records["diffusion"]),
        site=site.name,
        cohort_dir=site.cohort,
        train_ids=train_ids,
        holdout_ids=holdout_ids,
        state_dir=site.state_dir,
        node_config=dict(context.node_config),
    )
    return _reply(msg, site, audit=ConfigRecord({"result": json.dumps(result)}))


def build_app(mods: list[Any]) -> ClientApp:
    """This module's handlers on a new ClientApp, with ``mods`` outside :func:`outbound_mod`.

    For the simulation, which gives each virtual site its node config through a mod.
    """
    built = ClientApp(mods=[*mods, release_memory_mod, outbound_mod])
    built.train()(train)
    built.evaluate()(evaluate)
    built.query("audit")(audit)
    return built
