"""The privacy side of one site, as the trainer sees it (``StageTrainer(..., privacy=...)``).

:class:`SitePrivacy` bundles the site's ledger (one :class:`SiteAccountant` across stages and
rounds, saved to the site's state file after every round), its budget, and the planned rounds
used to derive σ when ``privacy.noise_multiplier`` is null. The trainer asks it for a
:class:`~fedcmr4d.privacy.engine.SubjectDP` per stage and calls :meth:`SitePrivacy.check_round`
before each call of ``train(steps)``, which raises
:class:`~fedcmr4d.errors.BudgetExhaustedError` before any step runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedcmr4d.config import Config
from fedcmr4d.errors import ConfigError
from fedcmr4d.privacy.accounting import (
    PRIVACY_FILE,
    Segment,
    SiteAccountant,
    default_delta,
    open_cohort_ledger,
)
from fedcmr4d.privacy.budget import check_budget, derive_noise_multiplier
from fedcmr4d.privacy.engine import SubjectDP
from fedcmr4d.privacy.guards import check_dp_model
from fedcmr4d.stages import Stage

if TYPE_CHECKING:
    from fedcmr4d.privacy.protocol import Privacy

STAGES = tuple(Stage)  # the DP plan, in training order: autoencoder, diffusion, segmenter
# Planned rounds when none are given (local training: one run per stage). The segmenter is
# planned only when the coordinator's message plans it, so a run without it keeps its budget.
DEFAULT_ROUNDS = {Stage.AUTOENCODER.value: 1, Stage.DIFFUSION.value: 1}
RELEASABLE_UNDER_DP = ("epsilon", "delta", "num-examples")


def releasable_metrics(metrics: Mapping[str, float], *, dp: bool) -> dict[str, float]:
    """The part of ``train()``'s metrics a site may send to the coordinator.

    Under DP the training losses are means over the sampled subjects' own data, neither clipped
    nor noised: ε does not cover them, so only ε, δ and the subject count (treated as public,
    like the sample rate it implies) are released. Without DP everything is returned.
    """
    if not dp:
        return dict(metrics)
    return {k: float(v) for k, v in metrics.items() if k in RELEASABLE_UNDER_DP}


def discriminator_active(cfg: Config, global_step: int) -> bool:
    """Whether stage 1 takes a discriminator step at ``global_step`` (0-based)."""
    return cfg.autoencoder.adversarial_active(global_step)


def stage_optimizer_steps(cfg: Config, stage: str, steps: int, start_step: int = 0) -> int:
    """DP optimizer steps (each with its own Poisson sample) in ``steps`` training steps.

    Stage 1 takes a generator step every training step and a discriminator step once the
    adversarial loss is on; stage 2 and the segmenter take one step per training step.
    """
    if stage in ("diffusion", "segmenter"):
        return steps
    if stage != "autoencoder":
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    d_steps = sum(discriminator_active(cfg, s) for s in range(start_step, start_step + steps))
    return steps + d_steps


class SitePrivacy:
    """A site's ledger, budget and DP settings across stages and rounds.

    Args:
        cfg: the run config (``privacy`` section, stage batch sizes and steps).
        ledger: the site's accountant (loaded from its state or new).
        n_subjects: N, the site's training subjects (sample rate q = batch / N).
        rounds: planned rounds per stage, to derive σ for the whole plan; local training is one
            round per stage.
        site: a name for messages (site id or output folder).
        local_total_steps: for single-site training, the run's total steps of the stage: the
            first ``train`` call then checks the whole remaining run against the budget, so a
            run that cannot finish within it is refused before its first step.
        seed: seeds Poisson sampling and noise (tests only). By default both come from the OS's
            entropy: a seed in a shared config would let anyone replay the noise and batches.
    """

    def __init__(
        self,
        cfg: Config,
        ledger: SiteAccountant,
        *,
        n_subjects: int,
        rounds: Mapping[str, int] | None = None,
        site: str = "site",
        local_total_steps: int | None = None,
        seed: int | None = None,
    ) -> None:
        if not cfg.privacy.enabled:
            raise ConfigError("privacy.enabled is false: no SitePrivacy for a non-DP run")
        self.cfg = cfg
        self.ledger = ledger
        self.n_subjects = n_subjects
        self.rounds = DEFAULT_ROUNDS | dict(rounds or {})
        self.site = site
        self.local_total_steps = local_total_steps
        self.seed = seed
        self.engines: dict[str, SubjectDP] = {}
        self.report_dir: Path | None = None  # where save() also writes privacy.json (local runs)

    @classmethod
    def open(
        cls,
        cfg: Config,
        n_subjects: int,
        *,
        state_path: str | Path | None = None,
        cohort: str | Path | None = None,
        report_dir: str | Path | None = None,
        rounds: Mapping[str, int] | None = None,
        site: str = "site",
        target_epsilon: float | None = None,
        target_delta: float | None = None,
        initial_state: str | Path | None = None,
        local_total_steps: int | None = None,
        seed: int | None = None,
    ) -> SitePrivacy:
        """Open the site's ledger: the cohort's, or the one at ``state_path``.

        ``cohort`` (the normal case: local and federated training) uses the cohort's own ledger
        (:func:`~fedcmr4d.privacy.accounting.open_cohort_ledger`), so every run on that cohort
        spends from one budget. ``state_path`` (tests, tools) loads that file if it exists, else
        starts a new ledger there; ``initial_state`` then seeds a new one.
        ``target_epsilon``/``target_delta`` (a site's own node config) override the config's.
        ``report_dir``: :meth:`save` also writes ``<report_dir>/privacy.json`` (DESIGN.md).
        """
        p = cfg.privacy
        epsilon = float(target_epsilon if target_epsilon is not None else p.target_epsilon)
        delta_cfg = target_delta if target_delta is not None else p.target_delta
        delta = float(delta_cfg) if delta_cfg is not None else default_delta(n_subjects)
        if cohort is not None:
            privacy = cls(
                cfg,
                open_cohort_ledger(
                    cohort, accountant=p.accountant, delta=delta, target_epsilon=epsilon
                ),
                n_subjects=n_subjects,
                rounds=rounds,
                site=site,
                local_total_steps=local_total_steps,
                seed=seed,
            )
            privacy.report_dir = Path(report_dir) if report_dir is not None else None
            return privacy
        path = Path(state_path) if state_path is not None else None
        source = path if path is not None and path.is_file() else None
        if source is None and initial_state is not None and Path(initial_state).is_file():
            source = Path(initial_state)
        if source is not None:
            ledger = SiteAccountant.load(
                source, accountant=p.accountant, delta=delta, target_epsilon=epsilon
            )
            ledger.state_path = path
        else:
            ledger = SiteAccountant(
                accountant=p.accountant, delta=delta, target_epsilon=epsilon, state_path=path
            )
        return cls(
            cfg,
            ledger,
            n_subjects=n_subjects,
            rounds=rounds,
            site=site,
            local_total_steps=local_total_steps,
            seed=seed,
        )

    # --- planning ----------------------------------------------------------------------------
    def _batch_size(self, stage: str) -> int:
        return self.cfg.train.stage(Stage.parse(stage)).batch_size

    def _segment(self, stage: str, sigma: float, optimizer_steps: int) -> Segment:
        return Segment(
            stage=stage,
            sample_rate=self._batch_size(stage) / self.n_subjects,
            noise_multiplier=sigma,
            steps=optimizer_steps,
            max_grad_norm=self.cfg.privacy.max_grad_norm,
        )

    def _remaining_plan(self, stage: str, start_step: int) -> list[Segment]:
        """This stage's planned steps from ``start_step`` on, and every later stage's."""
        plan = []
        for name in STAGES[STAGES.index(stage) :]:
            steps_per_round = self.cfg.round_steps(name)
            total = self.rounds.get(name, 0) * steps_per_round
            begin = start_step if name == stage else 0
            if name == stage:  # the stage asked for now: at least the round about to run
                total = max(total, begin + steps_per_round)
            n_opt = stage_optimizer_steps(self.cfg, name, max(0, total - begin), begin)
            if n_opt:
                plan.append(self._segment(name, 0.0, n_opt))
        return plan

    def noise_multiplier(self, stage: str, start_step: int = 0) -> float:
        """σ for ``stage``: the config's, or derived once from the budget and kept in the ledger."""
        configured = self.cfg.privacy.noise_multiplier
        if configured is not None:
            return float(configured)
        if stage not in self.ledger.derived_noise:
            plan = self._remaining_plan(stage, start_step)
            self.ledger.derived_noise[stage] = derive_noise_multiplier(self.ledger, plan)
        return self.ledger.derived_noise[stage]

    def check_round(self, stage: str, steps: int, start_step: int) -> float:
        """Refuse (before training) ``steps`` more steps of ``stage`` that would pass the budget.

        Returns:
            ε the site will have spent after these steps.

        Raises:
            BudgetExhaustedError: naming the site, the steps, ε after them and the target.
        """
        n_opt = stage_optimizer_steps(self.cfg, stage, steps, start_step)
        plan = [self._segment(stage, self.noise_multiplier(stage, start_step), n_opt)]
        return check_budget(self.ledger, plan, where=self.site)

    def _generator(self, offset: int, device: torch.device | str = "cpu") -> torch.Generator:
        seed = secrets.randbits(63) if self.seed is None else self.seed + offset
        return torch.Generator(device=device).manual_seed(seed)

    def engine(
        self, stage: str, *, start_step: int = 0, device: torch.device | str = "cpu"
    ) -> SubjectDP:
        """The DP machinery for ``stage`` (sampler, optimizer wrapping, per-subject gradients)."""
        return SubjectDP(
            stage=stage,
            ledger=self.ledger,
            n_subjects=self.n_subjects,
            batch_size=self._batch_size(stage),
            noise_multiplier=self.noise_multiplier(stage, start_step),
            max_grad_norm=self.cfg.privacy.max_grad_norm,
            generator=self._generator(0),
            noise_generator=self._generator(1, device),
        )

    # --- the training loop's side (fedcmr4d.privacy.protocol.Privacy) ----------------------
    def attach(
        self,
        stage: Stage,
        *,
        models: Mapping[str, nn.Module],
        n_subjects: int,
        start_step: int,
        device: torch.device,
    ) -> SubjectDP:
        """Check the models and build this stage's engine (the loop wraps its optimizers)."""
        if n_subjects != self.n_subjects:
            raise ConfigError(
                f"{self.site}: SitePrivacy was opened for {self.n_subjects} subjects, the "
                f"trainer has {n_subjects}; the sample rate would be wrong"
            )
        for name, model in models.items():
            check_dp_model(model, name=name)
        engine = self.engine(stage, start_step=start_step, device=device)
        self.engines[stage] = engine
        return engine

    def before_train(self, stage: Stage, *, steps: int, start_step: int) -> None:
        """Refuse ``steps`` (or, locally, the rest of the run) past the budget, before any step."""
        if self.local_total_steps is not None:
            steps = max(steps, self.local_total_steps - start_step)
        self.check_round(stage, steps, start_step)

    def after_train(self) -> dict[str, float]:
        """Save the ledger; return ``{"epsilon", "delta"}`` for the round's metrics."""
        self.save()
        return self.metrics()

    def checkpoint_meta(self) -> dict[str, object]:
        """What a checkpoint's ``meta.json`` records about privacy (the privacy.json content)."""
        return self.ledger.report()

    # --- reporting ---------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """``{"epsilon", "delta"}`` spent so far (for round metrics and checkpoint meta)."""
        return self.ledger.metrics()

    def save(self) -> Path | None:
        """Persist the ledger (and the run's ``privacy.json`` copy, if it has a report folder)."""
        saved = self.ledger.save() if self.ledger.state_path is not None else None
        if self.report_dir is not None:
            self.write_report(self.report_dir)
        return saved

    def write_report(self, out_dir: str | Path) -> Path:
        """Write ``<out_dir>/privacy.json`` (DESIGN.md shape)."""
        return self.ledger.save(Path(out_dir) / PRIVACY_FILE)


if TYPE_CHECKING:

    def _implements_the_protocol(site: SitePrivacy) -> Privacy:
        return site  # mypy: SitePrivacy is a Privacy
