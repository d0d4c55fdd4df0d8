"""Single-site training of one stage (``fedcmr4d train autoencoder|diffusion``).

The loop: split the cohort into training and held-out subjects (``data.holdout_fraction``,
seeded), build a :class:`~fedcmr4d.train.trainer.StageTrainer`, run ``train.<stage>.steps`` steps
in chunks of ``log_every`` (one ``curves.csv`` row per chunk), checkpoint every
``checkpoint_every`` steps and at the end, then evaluate the held-out subjects and record the
metrics in ``meta.json``. ``resume`` continues from the checkpoint and optimizer state in the
output folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.config import Config
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.privacy.protocol import Privacy
from fedcmr4d.progress import progress_bar
from fedcmr4d.stages import Stage
from fedcmr4d.train.checkpoint import (
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
    save_trainer_state,
)
from fedcmr4d.train.curves import plot_curves, read_curves, write_curves
from fedcmr4d.train.trainer import StageTrainer

log = logging.getLogger(__name__)


@dataclass
class LocalRunResult:
    """Where the checkpoint went and the held-out metrics."""

    out_dir: Path
    step: int
    metrics: dict[str, float]


def split_subjects(subject_ids: list[str], holdout_fraction: float, seed: int) -> tuple[list, list]:
    """(train, holdout) ids: a seeded shuffle; at least one training subject is kept."""
    ids = sorted(subject_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_hold = min(int(round(holdout_fraction * len(ids))), len(ids) - 1)
    hold = sorted(ids[i] for i in order[:n_hold])
    train = sorted(ids[i] for i in order[n_hold:])
    return train, hold


def _check_autoencoder(cfg: Config, autoencoder_dir: Path) -> dict[str, Any]:
    ckpt = load_checkpoint(autoencoder_dir)
    if ckpt.stage != Stage.AUTOENCODER:
        raise InputError(f"{autoencoder_dir}: a {ckpt.stage} checkpoint, expected autoencoder")
    if ckpt.cfg.autoencoder != cfg.autoencoder or ckpt.cfg.data != cfg.data:
        raise ConfigError(
            f"{autoencoder_dir}: its autoencoder/data config differs from this run's; train "
            "stage 2 with the config stage 1 was trained with"
        )
    return ckpt.weights


def train_local(
    stage: Stage | str,
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    autoencoder_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    privacy: Privacy | None = None,
) -> LocalRunResult:
    """Train one stage on one cohort and leave a checkpoint, curves and metrics in ``out_dir``."""
    stage = Stage.parse(stage)
    out = Path(out_dir)
    cohort = open_cohort(data_dir)
    train_ids, holdout_ids = split_subjects(cohort.subject_ids, cfg.data.holdout_fraction, cfg.seed)
    ae_weights = None
    if stage is Stage.DIFFUSION:
        if autoencoder_dir is None:
            raise ConfigError("train diffusion needs --autoencoder DIR (a stage-1 checkpoint)")
        ae_weights = _check_autoencoder(cfg, Path(autoencoder_dir))
    trainer = StageTrainer(
        stage,
        cfg,
        data_dir,
        subject_ids=train_ids,
        autoencoder_weights=ae_weights,
        privacy=privacy,
    )
    stage2: dict[str, Any] = {}
    if stage is Stage.DIFFUSION:  # the one writer records the relative stage-1 reference
        stage2 = {
            "autoencoder": autoencoder_dir,
            "latent_scale": trainer.checkpoint_meta()["latent_scale"],
        }
    rows: list[dict[str, float]] = []
    if resume:
        rows = _resume(trainer, out, stage)
    tc = trainer.train_cfg
    total = tc.steps
    # No subject ids: the split is the site's (split_subjects recomputes it from the cohort).
    meta_base = {"data": str(Path(data_dir).resolve())}

    def checkpoint(metrics: dict[str, float] | None = None) -> None:
        weights = {**trainer.get_weights(), **trainer.ema_weights()}
        meta = {**meta_base, "step": trainer.global_step}
        if privacy is not None:  # ε, δ and segments spent so far (fedcmr4d.privacy)
            meta["privacy"] = privacy.checkpoint_meta()
        if metrics is not None:
            meta["holdout_metrics"] = metrics
        save_checkpoint(out, stage=stage, cfg=cfg, weights=weights, meta=meta, **stage2)
        save_trainer_state(out, trainer.state_dict())

    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(progress) as bar:
        task = bar.add_task(stage, total=total, completed=trainer.global_step) if bar else None
        while trainer.global_step < total:
            chunk = min(tc.log_every, total - trainer.global_step)
            metrics = trainer.train(chunk)
            rows.append({"step": float(trainer.global_step), **metrics})
            write_curves(out, rows)
            if bar is not None and task is not None:
                shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in _SHOWN)
                bar.update(task, completed=trainer.global_step, description=f"{stage} {shown}")
            else:
                log.info("%s step %d %s", stage, trainer.global_step, metrics)
            every = tc.checkpoint_every
            if every and trainer.global_step % every < chunk and trainer.global_step < total:
                checkpoint()
    metrics = trainer.evaluate(holdout_ids) if holdout_ids else {}
    checkpoint(metrics)
    plot_curves(out, rows, f"{cfg.name}: {stage}")
    return LocalRunResult(out, trainer.global_step, metrics)


_SHOWN = ("loss", "l1", "perplexity", "adv_g", "adv_d")


def _resume(trainer: StageTrainer, out: Path, stage: str) -> list[dict[str, float]]:
    state = load_trainer_state(out)
    if state is None:
        raise InputError(f"{out}: --resume but no trainer_state.pt there (nothing to resume)")
    ckpt = load_checkpoint(out)
    if ckpt.stage != stage:
        raise InputError(f"{out}: holds a {ckpt.stage} checkpoint, cannot resume {stage}")
    weights = {k: v for k, v in ckpt.weights.items() if not k.startswith("ema.")}
    trainer.set_weights(weights)
    trainer.set_ema_weights(ckpt.weights)
    trainer.load_state_dict(state)
    return [row for row in read_curves(out) if row.get("step", 0) <= trainer.global_step]
