"""What a site does for one federated message, as plain torch code (no Flower here).

The ClientApp (``client_app.py``) turns Flower messages into calls of these functions. Each call
builds a :class:`~fedcmr4d.train.trainer.StageTrainer` on the site's own cohort with the
coordinator's config (plus the site's own device, holdout fraction and DP budget), checks the
message against the site's privacy policy (:mod:`fedcmr4d.privacy.policy`) before it reads any
data, loads the global weights, and returns weights or metrics. What may leave the site is
enforced in one place, :mod:`fedcmr4d.federated.outbound`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from fedcmr4d.config import Config
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.federated.settings import SiteSettings
from fedcmr4d.privacy.site import releasable_metrics
from fedcmr4d.seeds import stable_seed
from fedcmr4d.stages import Stage
from fedcmr4d.train.local import split_subjects

Weights = dict[str, torch.Tensor]


def site_subjects(site: SiteSettings, cfg: Config) -> tuple[list[str], list[str]]:
    """Train and holdout ids: the same seeded split as ``fedcmr4d train`` (every round)."""
    if not Path(site.cohort).is_dir():
        raise InputError(f"{site.cohort}: site {site.name}'s cohort folder does not exist")
    cohort = open_cohort(site.cohort)
    return split_subjects(list(cohort.subject_ids), cfg.data.holdout_fraction, cfg.seed)


def open_privacy(
    stage: str, cfg: Config, site: SiteSettings, n_subjects: int, rounds: dict[str, int]
) -> Any:
    """The site's DP ledger and budget (None without ``privacy.enabled``).

    The ledger is the cohort's own (``<cohort>/.fedcmr4d/privacy-ledger.json``), shared with
    local ``fedcmr4d train`` runs on the same cohort, so ε accumulates across rounds, stages and
    runs at this site, whatever the coordinator does.
    """
    if not cfg.privacy.enabled:
        return None
    from fedcmr4d.privacy.site import SitePrivacy

    return SitePrivacy.open(
        cfg,
        n_subjects,
        cohort=site.cohort,
        rounds=rounds,
        site=site.name,
        target_epsilon=site.target_epsilon,
        target_delta=site.target_delta,
    )


def make_trainer(
    stage: str,
    cfg: Config,
    site: SiteSettings,
    subject_ids: list[str],
    autoencoder: Weights | None,
    privacy: Any = None,
) -> Any:
    """A StageTrainer for this site (imported lazily: it pulls in MONAI and Opacus)."""
    from fedcmr4d.train.trainer import StageTrainer

    return StageTrainer(
        stage,  # type: ignore[arg-type]
        cfg,
        site.cohort,
        device=cfg.train.device,
        subject_ids=subject_ids,
        autoencoder_weights=autoencoder,
        privacy=privacy,
    )


def add_proximal_term(trainer: Any, global_weights: Weights, mu: float) -> None:
    """FedProx: pull local training towards the global weights.

    Adds ``mu * (w - w_global)`` to every parameter's gradient, the gradient of
    ``mu / 2 * ||w - w_global||^2``, through tensor hooks, so the trainer's own losses stay
    untouched. Not combined with DP-SGD (the DP engine computes per-subject gradients itself).
    """
    from fedcmr4d.train.models import strip_prefixes

    for name, model in trainer.models.items():
        for pname, param in model.named_parameters():
            anchor = global_weights[f"{name}.{strip_prefixes(pname)}"].to(param.device)

            def hook(grad: torch.Tensor, p: torch.Tensor = param, a: torch.Tensor = anchor):
                return grad + mu * (p.detach() - a.to(grad.dtype))

            param.register_hook(hook)


def round_first_epoch(server_round: int, batches: int, steps_per_epoch: int) -> int:
    """The epoch a site's round starts its data draws at.

    A site builds a fresh trainer every round. Starting each at epoch 0 replayed the same
    shuffle and the same slice / window / frame draws every round, so a round of fewer local
    steps than an epoch saw the same few subjects each time. A round of ``batches`` batches
    spans at most ``ceil(batches / steps_per_epoch)`` epochs, so each round gets its own.
    """
    return (server_round - 1) * math.ceil(batches / max(1, steps_per_epoch))


def round_seed(cfg: Config, site_name: str, stage: str, server_round: int) -> int:
    """Seed of the torch RNG for one site's round (diffusion noise and timesteps draw from it).

    In a simulation one Ray worker serves several sites in whatever order the scheduler picks, so
    the process-wide RNG state would otherwise depend on that order and the same federation would
    train differently from run to run. (DP noise has its own generator.)
    """
    return stable_seed(cfg.seed, site_name, stage, server_round)


def train_round(
    stage: str,
    cfg: Config,
    site: SiteSettings,
    global_weights: Weights,
    autoencoder: Weights | None,
    *,
    rounds: dict[str, int],
    server_round: int,
    proximal_mu: float = 0.0,
) -> tuple[Weights, dict[str, float]]:
    """Local steps from the global weights on this site's training subjects.

    Args:
        rounds: the coordinator's planned rounds per stage (the DP plan needs them).
        server_round: 1-based round of this stage; the trainer's step counter continues from
            the steps of earlier rounds, so schedules (warm-up, adversarial start) and the DP
            plan see the stage's true step.
        proximal_mu: FedProx weight sent by the coordinator's strategy (0: plain local SGD).

    Returns:
        The updated weights and the trainer's metrics (``num-examples`` included, and
        ``epsilon``/``delta`` under DP: the site's ledger is saved by the trainer's privacy hook).

    Raises:
        PolicyRefusal: the message breaks the site's policy (nothing read, trained or spent).
        BudgetExhaustedError: this round would pass the site's privacy budget (nothing is sent).
    """
    site.policy.check_plan(cfg, stage, rounds=rounds, server_round=server_round)
    train_ids, _ = site_subjects(site, cfg)
    privacy = open_privacy(stage, cfg, site, len(train_ids), rounds)
    if privacy is not None:
        batch_size = cfg.train.stage(Stage.parse(stage)).batch_size
        site.policy.check_sample_rate(batch_size, len(train_ids))
        start_step = (server_round - 1) * cfg.round_steps(stage)
        site.policy.check_noise(privacy.noise_multiplier(stage, start_step))
    trainer = make_trainer(stage, cfg, site, train_ids, autoencoder, privacy)
    trainer.set_weights(global_weights)
    if proximal_mu > 0:
        if cfg.privacy.enabled:
            raise ConfigError("fedprox (proximal-mu > 0) is not supported with privacy.enabled")
        add_proximal_term(trainer, global_weights, proximal_mu)
    steps = cfg.round_steps(stage)
    trainer.total_steps = rounds.get(stage, server_round) * steps
    trainer.global_step = (server_round - 1) * steps
    batches = steps * trainer.train_cfg.grad_accumulation
    trainer.start_at_epoch(round_first_epoch(server_round, batches, trainer.steps_per_epoch))
    torch.manual_seed(round_seed(cfg, site.name, stage, server_round))
    metrics = releasable_metrics(trainer.train(steps), dp=site.policy.dp_required(cfg))
    return trainer.get_weights(), metrics


def evaluate_round(
    stage: str,
    cfg: Config,
    site: SiteSettings,
    global_weights: Weights,
    autoencoder: Weights | None,
) -> dict[str, float]:
    """Losses of the global model on this site's holdout subjects (never trained on).

    Under DP these losses are not covered by ε (holdout patients are site data too, and the
    values are neither clipped nor noised), so only the subject count is returned.
    """
    train_ids, holdout_ids = site_subjects(site, cfg)
    if not holdout_ids:
        return {"num-examples": 0}
    trainer = make_trainer(stage, cfg, site, train_ids, autoencoder)
    trainer.set_weights(global_weights)
    metrics = dict(trainer.evaluate(holdout_ids))
    metrics.setdefault("num-examples", len(holdout_ids))
    return releasable_metrics(metrics, dp=site.policy.dp_required(cfg))

