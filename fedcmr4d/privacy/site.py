"""The privacy side of one site, as the trainer sees it (``StageTrainer(..., privacy=...)``).

:class:`SitePrivacy` bundles the site's ledger (one :class:`SiteAccountant` across stages and
rounds, saved to the site's state file after every round), its budget, and the planned rounds
used to derive σ when ``privacy.noise_multiplier`` is null. The trainer asks it for a
:class:`~fedcmr4d.privacy.engine.SubjectDP` per stage and calls :meth:`SitePrivacy.check_round`
before each call of ``train(steps)``, which raises
:class:`~fedcmr4d.errors.BudgetExhaustedError` before any step runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from fedcmr4d.config import Config
from fedcmr4d.errors import ConfigError
from fedcmr4d.privacy.accounting import PRIVACY_FILE, Segment, SiteAccountant, default_delta
from fedcmr4d.privacy.budget import check_budget, derive_noise_multiplier
from fedcmr4d.privacy.engine import SubjectDP

STAGES = ("autoencoder", "diffusion")


def discriminator_active(cfg: Config, global_step: int) -> bool:
    """Whether stage 1 takes a discriminator step at ``global_step`` (0-based)."""
    ae = cfg.autoencoder
    return ae.adversarial_weight > 0 and global_step >= ae.adversarial_start_step


def stage_optimizer_steps(cfg: Config, stage: str, steps: int, start_step: int = 0) -> int:
    """DP optimizer steps (each with its own Poisson sample) in ``steps`` training steps.

    Stage 1 takes a generator step every training step and a discriminator step once the
    adversarial loss is on; stage 2 takes one UNet step per training step.
    """
    if stage == "diffusion":
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
    """

    def __init__(
        self,
        cfg: Config,
        ledger: SiteAccountant,
        *,
        n_subjects: int,
        rounds: Mapping[str, int] | None = None,
        site: str = "site",
    ) -> None:
        if not cfg.privacy.enabled:
            raise ConfigError("privacy.enabled is false: no SitePrivacy for a non-DP run")
        self.cfg = cfg
        self.ledger = ledger
        self.n_subjects = n_subjects
        self.rounds = {stage: 1 for stage in STAGES} | dict(rounds or {})
        self.site = site

    @classmethod
    def open(
        cls,
        cfg: Config,
        n_subjects: int,
        *,
        state_path: str | Path | None = None,
        rounds: Mapping[str, int] | None = None,
        site: str = "site",
        target_epsilon: float | None = None,
        target_delta: float | None = None,
    ) -> SitePrivacy:
        """Load the site's ledger from ``state_path`` if it exists, else start a new one.

        ``target_epsilon``/``target_delta`` (a site's own node config) override the config's.
        """
        p = cfg.privacy
        epsilon = float(target_epsilon if target_epsilon is not None else p.target_epsilon)
        delta_cfg = target_delta if target_delta is not None else p.target_delta
        delta = float(delta_cfg) if delta_cfg is not None else default_delta(n_subjects)
        path = Path(state_path) if state_path is not None else None
        if path is not None and path.is_file():
            ledger = SiteAccountant.load(
                path, accountant=p.accountant, delta=delta, target_epsilon=epsilon
            )
        else:
            ledger = SiteAccountant(
                accountant=p.accountant, delta=delta, target_epsilon=epsilon, state_path=path
            )
        return cls(cfg, ledger, n_subjects=n_subjects, rounds=rounds, site=site)

    # --- planning ----------------------------------------------------------------------------
    def _batch_size(self, stage: str) -> int:
        return int(getattr(self.cfg.train, stage).batch_size)

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
            steps_per_round = getattr(self.cfg.train, name).steps
            total = self.rounds.get(name, 1) * steps_per_round
            begin = start_step if name == stage else 0
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

    def engine(self, stage: str, *, start_step: int = 0, seed: int | None = None) -> SubjectDP:
        """The DP machinery for ``stage`` (sampler, optimizer wrapping, per-subject gradients)."""
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        return SubjectDP(
            stage=stage,
            ledger=self.ledger,
            n_subjects=self.n_subjects,
            batch_size=self._batch_size(stage),
            noise_multiplier=self.noise_multiplier(stage, start_step),
            max_grad_norm=self.cfg.privacy.max_grad_norm,
            generator=generator,
        )

    # --- reporting ---------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """``{"epsilon", "delta"}`` spent so far (for round metrics and checkpoint meta)."""
        return self.ledger.metrics()

    def save(self) -> Path | None:
        """Persist the ledger to the site's state file, if it has one."""
        return self.ledger.save() if self.ledger.state_path is not None else None

    def write_report(self, out_dir: str | Path) -> Path:
        """Write ``<out_dir>/privacy.json`` (DESIGN.md shape)."""
        return self.ledger.save(Path(out_dir) / PRIVACY_FILE)
