"""What leaves a site: the one place that decides, for every reply of the ClientApp.

:func:`outbound_mod` is a Flower mod installed on the whole ClientApp (``ClientApp(mods=[...])``),
so it wraps every handler: train, evaluate and the audit query. Per message type only these
records and keys leave the site (docs/privacy.md, "What leaves a site"):

=================  ==========================================================================
reply              records and keys
=================  ==========================================================================
train              ``arrays`` (the weights); ``metrics``: ``num-examples``, ``epsilon``,
                   ``delta`` (without DP also the training losses, plain numbers);
                   ``privacy``: ``accountant`` (under DP); ``site``: ``name``
evaluate           ``metrics``: ``num-examples`` (without DP also holdout losses);
                   ``privacy``: ``accountant`` (under DP); ``site``: ``name``
query.audit        ``audit`` (the audit protocol's own record); ``site``: ``name``
policy refusal     an error whose reason is the policy line (``site policy: <key>: asked ...``)
any other error    an error whose reason is ``site error: <category> (id <hex>)``; the full
                   text and traceback go to the site's own log under that id
=================  ==========================================================================

Flower would otherwise send ``str(exception)`` of a failing handler to the coordinator, and
those texts name cohort paths and subject ids.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from fedcmr4d.errors import BudgetExhaustedError, ConfigError, InputError
from fedcmr4d.privacy.policy import PREFIX, PolicyRefusal, SitePolicy

log = logging.getLogger("fedcmr4d.site")

# Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION: the handler failed.
ERROR_CODE = 2
DP_METRICS = {"train": ("num-examples", "epsilon", "delta"), "evaluate": ("num-examples",)}
RECORDS: dict[str, dict[str, tuple[str, ...] | None]] = {
    # record name -> allowed keys (None: any key of that record type, checked below)
    "train": {"arrays": None, "metrics": None, "privacy": ("accountant",), "site": ("name",)},
    "evaluate": {"metrics": None, "privacy": ("accountant",), "site": ("name",)},
    "query.audit": {"audit": None, "site": ("name",)},
}
CATEGORIES: tuple[tuple[type[BaseException], str], ...] = (
    (BudgetExhaustedError, "budget"),
    (InputError, "input"),
    (ConfigError, "config"),
)

Handler = Callable[[Message, Context], Message]


def error_category(exc: BaseException) -> str:
    """``budget``, ``input`` (site data unreadable), ``config`` or ``internal``."""
    for kind, name in CATEGORIES:
        if isinstance(exc, kind):
            return name
    return "internal"


def error_reply(msg: Message, reason: str) -> Message:
    return Message(error=Error(code=ERROR_CODE, reason=reason), reply_to=msg)


def _policy(context: Context) -> SitePolicy:
    try:
        return SitePolicy.from_node_config(dict(context.node_config))
    except ConfigError:
        return SitePolicy(require_dp=True, target_epsilon=0.0)  # unreadable policy: strictest


def filter_reply(msg: Message, reply: Message, context: Context) -> Message:
    """The reply with only the records and keys its message type may carry (see module doc)."""
    if reply.has_error():
        return error_reply(msg, _safe_reason(str(reply.error.reason or "")))
    kind = msg.metadata.message_type
    allowed = RECORDS.get(kind)
    if allowed is None:
        log.warning("outbound: no reply content allowed for message type %r; sent empty", kind)
        return Message(RecordDict(), reply_to=msg)
    content = reply.content
    dp = _policy(context).require_dp or "privacy" in content.config_records
    kept: dict[str, object] = {}
    for name, record in content.items():
        if name not in allowed:
            log.warning("outbound: dropped record %r of a %s reply", name, kind)
            continue
        keys = allowed[name]
        if isinstance(record, MetricRecord):
            limit = DP_METRICS.get(kind) if dp else None
            record = MetricRecord({k: v for k, v in record.items() if limit is None or k in limit})
        elif isinstance(record, ConfigRecord) and keys is not None:
            record = ConfigRecord({k: v for k, v in record.items() if k in keys})
        kept[name] = record
    return Message(RecordDict(kept), reply_to=msg)  # type: ignore[arg-type]


def _safe_reason(reason: str) -> str:
    """An error some inner layer built: only a policy line passes as is."""
    if reason.startswith(PREFIX) and "\n" not in reason and "/" not in reason:
        return reason
    error_id = secrets.token_hex(6)
    log.error("site error %s: an inner error reply, not sent: %s", error_id, reason)
    return f"site error: internal (id {error_id})"


def outbound_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Run the handler; send only what :data:`RECORDS` allows, errors as a category and an id."""
    try:
        reply = call_next(msg, context)
    except PolicyRefusal as exc:
        log.warning("refused %s: %s", msg.metadata.message_type, exc)
        return error_reply(msg, _safe_reason(str(exc).splitlines()[0]))
    except Exception as exc:  # every failure: the text stays here, the coordinator gets an id
        error_id = secrets.token_hex(6)
        category = error_category(exc)
        log.error(
            "site error %s (%s) in %s: %s",
            error_id,
            category,
            msg.metadata.message_type,
            exc,
            exc_info=True,
        )
        return error_reply(msg, f"site error: {category} (id {error_id})")
    return filter_reply(msg, reply, context)


def node_config_mod(node_configs: Mapping[int, Mapping[str, object]]) -> Callable[..., Message]:
    """A mod that gives simulated site ``partition-id`` its own node config (simulation only).

    Flower's Simulation Engine gives each virtual SuperNode only ``partition-id`` and
    ``num-partitions``; this plays the part of ``flower-supernode --node-config`` for it.
    """
    configs = {int(k): dict(v) for k, v in node_configs.items()}

    def mod(msg: Message, context: Context, call_next: Handler) -> Message:
        pid = int(context.node_config.get("partition-id", -1))  # type: ignore[arg-type]
        for key, value in configs.get(pid, {}).items():
            context.node_config[key] = value  # type: ignore[assignment]
        return call_next(msg, context)

    return mod
