"""Budgets: refuse a training plan that would pass the site's ε, or derive σ that fits it.

Checks happen BEFORE any step runs: the plan (stage, sample rate, σ, clip, number of DP optimizer
steps) is appended to the ledger's segments and ε recomputed. Stage 1 has two DP optimizers
(generator and discriminator), each drawing its own Poisson batch, so its plan counts both.
"""

from __future__ import annotations

import math

from fedcmr4d.errors import BudgetExhaustedError, ConfigError
from fedcmr4d.privacy.accounting import Segment, SiteAccountant

MAX_SIGMA = 1.0e4


def check_budget(ledger: SiteAccountant, plan: list[Segment], *, where: str = "site") -> float:
    """Return ε after ``plan``; raise :class:`BudgetExhaustedError` if it passes the budget.

    Args:
        ledger: the site's accountant (its segments so far, δ and target ε).
        plan: the steps about to run (not yet recorded).
        where: names the site/output in the message so the operator knows which budget.
    """
    spent = ledger.epsilon()
    after = ledger.epsilon(plan)
    if after > ledger.target_epsilon:
        steps = sum(s.steps for s in plan)
        stages = ", ".join(sorted({s.stage for s in plan})) or "-"
        sigma = ", ".join(sorted({f"{s.noise_multiplier:g}" for s in plan})) or "-"
        raise BudgetExhaustedError(
            f"{where}: privacy budget exhausted: {steps} more DP steps ({stages}, "
            f"noise multiplier {sigma}) would bring ε to {after:.3g} at δ={ledger.delta:.3g}, "
            f"past the target ε={ledger.target_epsilon:g} (spent so far: ε={spent:.3g}). "
            "Raise privacy.target_epsilon or privacy.noise_multiplier, or plan fewer steps."
        )
    return after


def derive_noise_multiplier(
    ledger: SiteAccountant,
    plan: list[Segment],
    *,
    tolerance: float = 0.01,
) -> float:
    """The smallest σ (to ``tolerance`` in ε) such that the ledger plus ``plan`` at σ fits.

    Like Opacus's ``get_noise_multiplier`` (used by ``make_private_with_epsilon``), but it
    composes with the steps the site has already spent and with several planned segments (both
    stages, all planned rounds), which Opacus's helper cannot. The ``noise_multiplier`` of the
    ``plan`` segments is ignored.

    Raises:
        BudgetExhaustedError: nothing is left (ε already at the target) or σ would exceed 1e4.
    """
    if not plan or sum(s.steps for s in plan) == 0:
        raise ConfigError("privacy.noise_multiplier: null needs a plan with at least one step")
    target = ledger.target_epsilon
    spent = ledger.epsilon()
    if spent >= target:
        raise BudgetExhaustedError(
            f"privacy budget exhausted: ε={spent:.3g} already spent of target ε={target:g}; "
            "no noise multiplier can fit more steps"
        )

    def eps_at(sigma: float) -> float:
        trial = [Segment(s.stage, s.sample_rate, sigma, s.steps, s.max_grad_norm) for s in plan]
        return ledger.epsilon(trial)

    low, high = 0.0, 1.0
    while eps_at(high) > target:
        low, high = high, high * 2
        if high > MAX_SIGMA:
            raise BudgetExhaustedError(
                f"privacy budget too small: even σ={MAX_SIGMA:g} passes target ε={target:g} "
                f"at δ={ledger.delta:.3g} for {sum(s.steps for s in plan)} planned steps"
            )
    while True:
        eps_high = eps_at(high)
        if target - eps_high <= tolerance or high - low < 1e-4:
            return high
        mid = (low + high) / 2
        if eps_at(mid) <= target:
            high = mid
        else:
            low = mid


def plan_segments(
    *,
    stage: str,
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    steps: int,
) -> list[Segment]:
    """A one-segment plan (helper for callers that plan one stage at a time)."""
    if not math.isfinite(sample_rate) or not 0 < sample_rate <= 1:
        raise ConfigError(f"privacy: sample rate must be in (0, 1] (got {sample_rate})")
    return [Segment(stage, sample_rate, noise_multiplier, int(steps), max_grad_norm)]
