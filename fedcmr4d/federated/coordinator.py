"""The coordinator's round loop: send, screen, aggregate, checkpoint, resume.

The round loop is ours rather than ``Strategy.start`` so that every round can (1) screen each
site's reply before aggregation and leave out bad ones (:mod:`fedcmr4d.federated.screening`),
(2) refuse to count a round with fewer than ``federation.min_accepted`` accepted updates,
(3) checkpoint weights, strategy state and history atomically, and (4) continue at the next
round after a crash (``resume = true``). Aggregation itself is the Flower strategy's
(``strategy.configure_train`` / ``strategy.aggregate_train``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcmr4d.config import Config, FederationConfig
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.audit_stage import ensure_synthetic, run_audit_stage
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.federated.loss_weighting import set_aggregation_weights
from fedcmr4d.federated.messages import common_metric_keys, message_config, site_name
from fedcmr4d.federated.metrics_log import write_metrics
from fedcmr4d.federated.records import (
    cast_like,
    numpy_to_record,
    record_nbytes,
    record_to_numpy,
    weights_to_record,
)
from fedcmr4d.federated.screening import screen_replies, site_privacy
from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.stage1_delivery import Stage1Delivery
from fedcmr4d.federated.stage_checkpoint import save_stage_checkpoint
from fedcmr4d.federated.state import (
    ServerState,
    Snapshot,
    check_resumable,
    load_snapshot,
    save_snapshot,
)
from fedcmr4d.federated.strategies import (
    WEIGHT_KEY,
    build_strategy,
    restore_strategy_state,
    strategy_state,
    weighted_mean,
)
from fedcmr4d.io import atomic_write_json

log = logging.getLogger("flwr.fedcmr4d")  # propagates to Flower's handler: `flwr log`
Progress = Callable[[str], None]


#: Written to the out-dir when a round misses the quorum (the round is not counted).
QUORUM_FAILED_FILE = "quorum-failed.json"


class QuorumError(ConfigError):
    """A round had fewer accepted updates than ``federation.min_accepted``: it does not count."""


@dataclass
class RoundOutcome:
    """The new global weights of a round (None: nothing accepted) and its history row."""

    arrays: ArrayRecord | None
    row: dict[str, Any]


def run_round(
    grid: Grid,
    strategy: Strategy,
    *,
    stage: str,
    server_round: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    stage1: Stage1Delivery | None,
    cfg: Config,
    timeout: float,
    declared_examples: dict[str, float] | None = None,
) -> RoundOutcome:
    """One round: send, collect, check every update, aggregate the accepted ones.

    Args:
        declared_examples: site name -> num-examples declared in its first round (updated).

    Returns:
        The aggregated weights (None when fewer than ``federation.min_accepted`` updates were
        accepted: nothing is aggregated) and the round's history row: sites replied/accepted,
        rejections and policy refusals with reasons, aggregated metrics, each site's (ε, δ,
        accountant), bytes each way.
    """
    started = time.monotonic()
    messages = list(strategy.configure_train(server_round, arrays, config, grid))
    extra_bytes = _attach_stage1(stage1, messages)
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    if stage1 is not None:
        stage1.update(replies)

    screened = screen_replies(
        replies, arrays, fed=cfg.federation, declared_examples=declared_examples
    )
    accepted, rejected, report = screened.accepted, screened.rejected, screened.report
    for entry in rejected:
        verb = "refused by" if entry in screened.refused else "rejected"
        log.warning(
            "%s round %d: %s %s: %s", stage, server_round, verb, entry["site"], entry["reason"]
        )

    new_arrays: ArrayRecord | None = None
    metrics: MetricRecord | None = None
    factors: dict[str, float] = {}
    if len(accepted) >= cfg.federation.min_accepted:
        new_arrays, metrics, factors = aggregate_accepted(
            strategy, server_round, accepted, fed=cfg.federation, stage=stage
        )
        if new_arrays is not None:
            # FedAdam & co. compute in float64; the model (and every site's reply) stays float32.
            new_arrays = cast_like(new_arrays, arrays)
    model_bytes = record_nbytes(arrays)
    row = {
        "stage": stage,
        "round": server_round,
        "sites_replied": len(replies),
        "sites_accepted": len(accepted),
        "accepted": report.accepted,
        "examples": {  # what each accepted site declared (the audit checks its counts against it)
            site_name(r): int(r.content.metric_records["metrics"].get(WEIGHT_KEY, 0))  # type: ignore[arg-type]
            for r in accepted
        },
        "rejected": rejected,
        # Each accepted site's loss factor (federation.loss_weighting; 1 each without it).
        "aggregation_factors": factors,
        "refused": len(screened.refused),
        "privacy": site_privacy(replies),
        "update_norms": report.update_norms,
        "train": dict(metrics) if metrics is not None else {},
        "model_bytes": model_bytes,
        "bytes_to_sites": model_bytes * len(messages) + extra_bytes,
        "bytes_from_sites": sum(
            record_nbytes(r.content.array_records["arrays"])
            for r in replies
            if not r.has_error() and "arrays" in r.content.array_records
        ),
        "seconds": round(time.monotonic() - started, 3),
    }
    return RoundOutcome(new_arrays, row)


def aggregate_accepted(
    strategy: Strategy,
    server_round: int,
    accepted: list[Message],
    *,
    fed: FederationConfig,
    stage: str,
) -> tuple[ArrayRecord | None, MetricRecord | None, dict[str, float]]:
    """The strategy's aggregate of the accepted replies, and each site's loss factor.

    The aggregation weights (:func:`~fedcmr4d.federated.loss_weighting.set_aggregation_weights`)
    are set before the metrics are trimmed to the keys all replies share: a DP site sends no
    loss, and the other sites' losses must still weigh them.
    """
    factors = set_aggregation_weights(
        accepted, power=fed.loss_power(stage), cap=fed.loss_weighting_cap
    )
    common_metric_keys(accepted)
    arrays, metrics = strategy.aggregate_train(server_round, accepted)
    return arrays, metrics, factors


def _attach_stage1(stage1: Stage1Delivery | None, messages: list[Message]) -> int:
    """Tag stage-2 messages with the autoencoder (arrays only where missing); bytes added."""
    return sum(stage1.attach(m) for m in messages) if stage1 is not None else 0


def evaluate_stage(
    grid: Grid,
    *,
    arrays: ArrayRecord,
    config: ConfigRecord,
    stage1: Stage1Delivery | None,
    timeout: float,
) -> dict[str, Any]:
    """Holdout losses of a stage's final model at every connected site, weighted by subjects."""
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": config}),
            dst_node_id=node_id,
            message_type=MessageType.EVALUATE,
        )
        for node_id in sorted(grid.get_node_ids())
    ]
    _attach_stage1(stage1, messages)
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    if stage1 is not None:
        stage1.update(replies)
    replies = [r for r in replies if not r.has_error()]
    per_site: dict[str, dict[str, float]] = {
        site_name(r): {
            k: float(v)  # type: ignore[arg-type]
            for k, v in r.content.metric_records["metrics"].items()
        }
        for r in replies
    }
    total = sum(m.get(WEIGHT_KEY, 0.0) for m in per_site.values())
    keys = sorted({k for m in per_site.values() for k in m} - {WEIGHT_KEY})
    rows = list(per_site.values())
    mean = {key: weighted_mean(rows, key, WEIGHT_KEY) for key in keys} if total else {}
    return {"sites": per_site, "mean": mean, "num-examples": total}


class Coordinator:
    """Runs the planned stages with per-round checkpoints; one instance per ServerApp run.

    :meth:`after_round` runs after each checkpointed round (a subclass may extend it).
    """

    def __init__(self, grid: Grid, settings: RunSettings, progress: Progress | None = None):
        self.grid = grid
        self.settings = settings
        self.progress = progress or (lambda text: log.info("%s", text))
        self.cfg = settings.load()
        self.cfg_yaml = self.cfg.to_yaml()
        self.out = Path(settings.out_dir)
        self.stages = settings.stage_list()

    def _start_state(self) -> tuple[ServerState, Snapshot | None]:
        run_config = self.settings.to_run_config()
        snapshot = load_snapshot(self.out)
        if snapshot is not None and not self.settings.resume:
            raise ConfigError(
                f"{self.out}: holds a checkpoint of an earlier run; set resume=true to continue "
                "it or choose another out-dir"
            )
        if snapshot is None:
            if self.settings.resume:
                self.progress(f"resume: no checkpoint in {self.out}; starting from round 1")
            state = ServerState(
                stage=self.stages[0], run_config=run_config, config_yaml=self.cfg_yaml
            )
            return state, None
        check_resumable(snapshot, run_config, self.cfg_yaml)
        state = snapshot.state
        state.run_config = run_config
        self.progress(f"resuming after {state.stage} round {state.round}")
        return state, snapshot

    def run(self) -> ServerState:
        """Run (or continue) every stage; return the final state."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "run_config.json", self.settings.to_run_config())
        state, snapshot = self._start_state()
        autoencoder = snapshot.autoencoder if snapshot is not None else None
        for stage in self.stages:
            if stage == "audit":
                self._audit_stage()
                continue
            if stage in state.completed_stages:
                continue
            autoencoder = self._train_stage(stage, state, snapshot, autoencoder)
            snapshot = None
        self.progress(f"federation finished: {len(state.history)} rounds; metrics in {self.out}")
        return state

    def _train_stage(
        self,
        stage: str,
        state: ServerState,
        snapshot: Snapshot | None,
        autoencoder: dict[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray] | None:
        settings, cfg = self.settings, self.cfg
        rounds = settings.rounds(stage, cfg)
        strategy = build_strategy(cfg.federation)
        config = message_config(settings, stage, cfg, self.cfg_yaml)
        stage1 = None
        if stage == "diffusion":
            if not autoencoder:
                raise ConfigError("stage diffusion needs the autoencoder stage first (stages=...)")
            stage1 = Stage1Delivery(numpy_to_record(autoencoder))
        if snapshot is not None and state.stage == stage and state.round > 0:
            arrays = numpy_to_record(snapshot.global_weights)
            restore_strategy_state(strategy, snapshot.strategy_arrays, state.strategy_scalars)
        else:
            state.stage, state.round = stage, 0
            arrays = self._initial(stage)
        self.progress(f"{stage}: {rounds} round(s), {record_nbytes(arrays) / 1e6:.2f} MB model")
        for server_round in range(state.round + 1, rounds + 1):
            outcome = run_round(
                self.grid,
                strategy,
                stage=stage,
                server_round=server_round,
                arrays=arrays,
                config=config,
                stage1=stage1,
                cfg=cfg,
                timeout=settings.round_timeout,
                declared_examples=state.declared_examples,
            )
            if outcome.arrays is None:
                self._quorum_failed(outcome.row)
            arrays = outcome.arrays
            state.round = server_round
            state.history.append(outcome.row)
            self._checkpoint(state, arrays, strategy, autoencoder)
            self._report_round(outcome.row, rounds)
            self.after_round(state)
        final = record_to_numpy(arrays)
        self._finish_stage(stage, state, arrays, config, stage1)
        if stage == "autoencoder":
            autoencoder = final
        if stage not in state.completed_stages:
            state.completed_stages.append(stage)
        self._checkpoint(state, arrays, strategy, autoencoder)
        return autoencoder

    def _quorum_failed(self, row: dict[str, Any]) -> NoReturn:
        """Stop: the round is not counted and no checkpoint is written (resume retries it)."""
        need = self.cfg.federation.min_accepted
        reasons = "; ".join(f"{r['site']}: {r['reason']}" for r in row["rejected"]) or "none"
        text = (
            f"{row['stage']} round {row['round']}: {row['sites_accepted']} of "
            f"{row['sites_replied']} replies accepted, the quorum federation.min_accepted is "
            f"{need}; the round is not counted and no checkpoint was written (resume=true "
            f"retries it). Left out: {reasons}"
        )
        log.error("%s", text)
        self.progress(text)
        # The round's record, for the operator: it is not in the history (the round did not count).
        atomic_write_json(self.out / QUORUM_FAILED_FILE, {**row, "reason": text})
        raise QuorumError(text)

    def after_round(self, state: ServerState) -> None:
        """Called after every checkpointed round (nothing here; a hook for subclasses)."""

    def site_privacy(self, state: ServerState) -> dict[str, Any]:
        """``{"sites": {<site>: {<stage>: {"epsilon", "delta", "accountant"}}}}`` so far.

        The last value each site reported in each stage: a site's ledger spans stages, so its
        stage-2 ε covers stage 1 too.
        """
        sites: dict[str, dict[str, Any]] = {}
        for row in state.history:
            for site, entry in (row.get("privacy") or {}).items():
                sites.setdefault(site, {})[row["stage"]] = dict(entry)
        return {"sites": sites}

    def _initial(self, stage: str) -> ArrayRecord:
        return weights_to_record(initial_weights(stage, self.cfg))

    def _checkpoint(
        self,
        state: ServerState,
        arrays: ArrayRecord,
        strategy: Strategy,
        autoencoder: dict[str, np.ndarray] | None,
    ) -> None:
        strategy_arrays, state.strategy_scalars = strategy_state(strategy)
        snapshot = Snapshot(state, record_to_numpy(arrays), strategy_arrays, autoencoder)
        save_snapshot(self.out, snapshot)
        write_metrics(self.out, state.history)

    def _report_round(self, row: dict[str, Any], rounds: int) -> None:
        losses = ", ".join(f"{k}={v:.4g}" for k, v in sorted(row["train"].items()) if "loss" in k)
        eps = row["train"].get("epsilon")
        text = (
            f"{row['stage']} round {row['round']}/{rounds}: {row['sites_accepted']}/"
            f"{row['sites_replied']} sites accepted"
            + (f", {len(row['rejected'])} rejected" if row["rejected"] else "")
            + (f", {losses}" if losses else "")
            + (f", epsilon={eps:.3g}" if eps is not None else "")
            + f", {row['seconds']:.1f}s"
        )
        self.progress(text)

    def _finish_stage(
        self,
        stage: str,
        state: ServerState,
        arrays: ArrayRecord,
        config: ConfigRecord,
        stage1: Stage1Delivery | None,
    ) -> None:
        evaluation: dict[str, Any] = {"sites": {}, "mean": {}, "num-examples": 0}
        if self.settings.evaluate:
            evaluation = evaluate_stage(
                self.grid,
                arrays=arrays,
                config=config,
                stage1=stage1,
                timeout=self.settings.round_timeout,
            )
        atomic_write_json(self.out / f"{stage}-evaluation.json", evaluation)
        save_stage_checkpoint(
            self.out / stage,
            stage,
            self.cfg,
            arrays,
            state,
            evaluation,
            privacy=self.site_privacy(state),
        )
        holdout = ", ".join(f"{k}={v:.4g}" for k, v in evaluation["mean"].items()) or "not run"
        self.progress(f"{stage}: done; holdout {holdout}; checkpoint {self.out / stage}")

    def label_segmenter(self) -> str:
        """The segmenter that labels the sampled cohort: ``label-segmenter`` when set, else the
        federated one (``<out-dir>/segmenter``) when this run has the segmenter stage, else none."""
        if self.settings.label_segmenter:
            return self.settings.label_segmenter
        if "segmenter" in self.stages:
            return str(self.out / "segmenter")
        return ""

    def _audit_stage(self) -> None:
        settings = self.settings
        synthetic = ensure_synthetic(
            self.out,
            settings.synthetic_dir,
            settings.synthetic_subjects,
            self.cfg.seed,
            self.label_segmenter(),
        )
        run_audit_stage(
            self.grid,
            cfg=self.cfg,
            config=message_config(settings, "audit", self.cfg, self.cfg_yaml),
            synthetic_dir=synthetic,
            out=self.out,
            timeout=settings.round_timeout,
            progress=self.progress,
        )
