"""Flower ServerApp: the coordinator's round loop, with checks, checkpoints and resume.

``flwr run`` starts :data:`app`, which reads the run config once (see
:mod:`fedcmr4d.federated.settings`) and runs the stages in order. The round loop is ours rather
than ``Strategy.start`` so that every round can (1) check each site's update before aggregation
and leave out bad ones, (2) checkpoint weights, strategy state and history atomically, and (3)
continue at the next round after a crash (``resume = true``). Aggregation itself is the Flower
strategy's (``strategy.configure_train`` / ``strategy.aggregate_train``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from safetensors.numpy import load_file as load_file_numpy

from fedcmr4d.config import Config
from fedcmr4d.errors import ConfigError
from fedcmr4d.federated.audit_stage import ensure_synthetic, run_audit_stage
from fedcmr4d.federated.init_weights import initial_weights
from fedcmr4d.federated.metrics_log import write_metrics
from fedcmr4d.federated.records import (
    cast_like,
    numpy_to_record,
    numpy_to_weights,
    record_nbytes,
    record_to_numpy,
    record_to_weights,
    weights_to_record,
)
from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.stage1_delivery import Stage1Delivery
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
)
from fedcmr4d.federated.validation import ValidationReport, validate_updates
from fedcmr4d.io import atomic_write_json

log = logging.getLogger("flwr.fedcmr4d")  # propagates to Flower's handler: `flwr log`
Progress = Callable[[str], None]


class SimulatedCrash(RuntimeError):
    """Raised by the test-only ``test-halt-after-round`` flag, as a crash would stop the run."""


@dataclass
class RoundOutcome:
    """The new global weights of a round (None: nothing accepted) and its history row."""

    arrays: ArrayRecord | None
    row: dict[str, Any]


def _message_config(settings: RunSettings, stage: str, cfg: Config, cfg_yaml: str) -> ConfigRecord:
    return ConfigRecord(
        {
            "stage": stage,
            "config-yaml": cfg_yaml,
            "rounds-autoencoder": settings.rounds("autoencoder", cfg),
            "rounds-diffusion": settings.rounds("diffusion", cfg),
            "cohort-root": settings.cohort_root,
            "state-root": settings.state_root,
            "test-corrupt": settings.test_corrupt,
        }
    )


def _site_name(reply: Message) -> str:
    return f"{_site_only(reply)} (node {reply.metadata.src_node_id})"


def _site_only(reply: Message) -> str:
    site = reply.content.config_records.get("site")
    return str(site["name"]) if site is not None and "name" in site else "?"


def _by_site(reply: Message) -> tuple[str, int]:
    """Sort key: the site's name (stable across runs; node ids are drawn anew), then node id."""
    return ("" if reply.has_error() else _site_only(reply), reply.metadata.src_node_id)


def _examples(reply: Message) -> int:
    return int(reply.content.metric_records["metrics"].get(WEIGHT_KEY, 0))  # type: ignore[arg-type]


def _common_metric_keys(replies: list[Message]) -> None:
    """Trim every reply's metrics to the keys all have (Flower's strategies require equal keys)."""
    records = [r.content.metric_records["metrics"] for r in replies]
    common = set.intersection(*(set(m.keys()) for m in records))
    for record in records:
        for key in [k for k in record if k not in common]:
            del record[key]


def screen_replies(
    replies: list[Message], arrays: ArrayRecord, *, max_norm_ratio: float
) -> tuple[list[Message], list[dict[str, str]], ValidationReport]:
    """Split replies into those fit to aggregate and those left out (with a reason each).

    Left out: error replies (a site crashed, timed out or refused, e.g. its privacy budget is
    spent), replies without weights or metrics, and updates failing :func:`validate_updates`.
    Replies are taken in site order, not arrival order, so that the aggregate (a float sum
    whose result depends on its order) is the same in every run of the same federation.
    """
    rejected: list[dict[str, str]] = []
    candidates: dict[str, Message] = {}
    for reply in sorted(replies, key=_by_site):
        if reply.has_error():
            label = f"node {reply.metadata.src_node_id}"
            rejected.append({"site": label, "reason": f"site error: {reply.error.reason}"})
        elif "arrays" not in reply.content.array_records or "metrics" not in reply.content:
            rejected.append({"site": _site_name(reply), "reason": "reply lacks arrays or metrics"})
        else:
            candidates[_site_name(reply)] = reply
    updates = []
    for label, reply in candidates.items():
        examples = reply.content.metric_records["metrics"].get(WEIGHT_KEY, 0.0)
        weights = record_to_numpy(reply.content.array_records["arrays"])
        updates.append((label, weights, float(examples)))  # type: ignore[arg-type]
    report = validate_updates(record_to_numpy(arrays), updates, max_norm_ratio=max_norm_ratio)
    rejected += [{"site": r.site, "reason": r.reason} for r in report.rejected]
    return [candidates[label] for label in report.accepted], rejected, report


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
) -> RoundOutcome:
    """One round: send, collect, check every update, aggregate the accepted ones.

    Returns:
        The aggregated weights (None when no update was accepted) and the round's history row:
        sites replied/accepted, rejections with reasons, aggregated metrics, bytes each way.
    """
    started = time.monotonic()
    messages = list(strategy.configure_train(server_round, arrays, config, grid))
    extra_bytes = _attach_stage1(stage1, messages)
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    if stage1 is not None:
        stage1.update(replies)

    accepted, rejected, report = screen_replies(
        replies, arrays, max_norm_ratio=cfg.federation.max_update_norm_ratio
    )
    for entry in rejected:
        log.warning(
            "%s round %d: rejected %s: %s", stage, server_round, entry["site"], entry["reason"]
        )

    new_arrays: ArrayRecord | None = None
    metrics: MetricRecord | None = None
    if accepted:
        _common_metric_keys(accepted)
        new_arrays, metrics = strategy.aggregate_train(server_round, accepted)
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
        "examples": {_site_name(r): _examples(r) for r in accepted},  # what each site declared
        "rejected": rejected,
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
        _site_name(r): {
            k: float(v)  # type: ignore[arg-type]
            for k, v in r.content.metric_records["metrics"].items()
        }
        for r in replies
    }
    total = sum(m.get(WEIGHT_KEY, 0.0) for m in per_site.values())
    keys = sorted({k for m in per_site.values() for k in m} - {WEIGHT_KEY})
    mean: dict[str, float] = {}
    for key in keys if total else []:
        mean[key] = sum(m.get(key, 0.0) * m.get(WEIGHT_KEY, 0.0) for m in per_site.values()) / total
    return {"sites": per_site, "mean": mean, "num-examples": total}


class Coordinator:
    """Runs the planned stages with per-round checkpoints; one instance per ServerApp run."""

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
        config = _message_config(settings, stage, cfg, self.cfg_yaml)
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
            )
            if outcome.arrays is not None:
                arrays = outcome.arrays
            state.round = server_round
            state.history.append(outcome.row)
            self._checkpoint(state, arrays, strategy, autoencoder)
            self._report_round(outcome.row, rounds)
            halt = settings.test_halt_after_round
            if halt and len(state.history) == halt:
                raise SimulatedCrash(f"test-halt-after-round={halt}: stopping as a crash would")
        final = record_to_numpy(arrays)
        self._finish_stage(stage, state, arrays, config, stage1)
        if stage == "autoencoder":
            autoencoder = final
        if stage not in state.completed_stages:
            state.completed_stages.append(stage)
        self._checkpoint(state, arrays, strategy, autoencoder)
        return autoencoder

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
        save_stage_checkpoint(self.out / stage, stage, self.cfg, arrays, state, evaluation)
        holdout = ", ".join(f"{k}={v:.4g}" for k, v in evaluation["mean"].items()) or "not run"
        self.progress(f"{stage}: done; holdout {holdout}; checkpoint {self.out / stage}")

    def _audit_stage(self) -> None:
        settings = self.settings
        synthetic = ensure_synthetic(
            self.out, settings.synthetic_dir, settings.synthetic_subjects, self.cfg.seed
        )
        run_audit_stage(
            self.grid,
            cfg=self.cfg,
            config=_message_config(settings, "audit", self.cfg, self.cfg_yaml),
            synthetic_dir=synthetic,
            out=self.out,
            timeout=settings.round_timeout,
            progress=self.progress,
        )


def save_stage_checkpoint(
    out_dir: Path,
    stage: str,
    cfg: Config,
    arrays: ArrayRecord,
    state: ServerState,
    evaluation: dict[str, Any],
) -> None:
    """The stage's final global model in the trainer's checkpoint format (for ``sample``)."""
    from fedcmr4d.train.checkpoint import save_checkpoint

    weights = record_to_weights(arrays)
    rounds = [r for r in state.history if r["stage"] == stage]
    epsilons = [r["train"]["epsilon"] for r in rounds if "epsilon" in r["train"]]
    meta: dict[str, Any] = {
        "federated": True,
        "round": len(rounds),
        "sites": sorted({s for r in rounds for s in r["accepted"]}),
        "holdout_metrics": evaluation["mean"],
        "epsilon_max_site": max(epsilons) if epsilons else None,
    }
    if stage == "diffusion":
        from fedcmr4d.io import sha256_file
        from fedcmr4d.train.checkpoint import WEIGHTS_FILE
        from fedcmr4d.train.models import stack_slices_of
        from fedcmr4d.train.trainer import load_frozen_autoencoder

        ae_dir = out_dir.parent / "autoencoder"
        ae_weights = numpy_to_weights(load_file_numpy(ae_dir / WEIGHTS_FILE))
        meta |= {
            "autoencoder_checkpoint": str(ae_dir.resolve()),
            "autoencoder_sha256": sha256_file(ae_dir / WEIGHTS_FILE),
            "latent_scale": load_frozen_autoencoder(cfg, ae_weights).quantizer.latent_scale(),
            "latent_scale_source": "codebook (1 / std of the l2-normalised codes' entries)",
            "stack_slices": stack_slices_of(cfg),
        }
    save_checkpoint(out_dir, stage=stage, cfg=cfg, weights=weights, meta=meta)  # type: ignore[arg-type]


def make_server_app(settings: RunSettings, progress: Progress | None = None) -> ServerApp:
    """A ServerApp bound to fixed settings (the Simulation Engine passes no run config)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        Coordinator(grid, settings, progress).run()

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: read the run config once, typed, then run the stages."""
    settings = RunSettings.from_run_config(dict(context.run_config))
    Coordinator(grid, settings).run()
