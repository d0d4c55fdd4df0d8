"""The site ledger: ε at δ, privacy.json, restart, budgets and σ derivation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedcmr4d.errors import BudgetExhaustedError, ConfigError, InputError
from fedcmr4d.privacy.accounting import Segment, SiteAccountant, default_delta
from fedcmr4d.privacy.budget import check_budget, derive_noise_multiplier


def _steps(ledger: SiteAccountant, stage: str, q: float, sigma: float, n: int) -> None:
    for _ in range(n):
        ledger.step(stage=stage, sample_rate=q, noise_multiplier=sigma, max_grad_norm=1.0)


def test_report_epsilon_matches_an_independent_rdp_replay(tmp_path: Path) -> None:
    ledger = SiteAccountant(accountant="rdp", delta=1e-3, target_epsilon=50.0)
    _steps(ledger, "autoencoder", 0.25, 1.1, 40)
    _steps(ledger, "autoencoder", 0.25, 0.9, 7)
    _steps(ledger, "diffusion", 0.5, 1.3, 25)
    path = ledger.write_report(tmp_path)
    report = json.loads(path.read_text())
    assert [s["steps"] for s in report["segments"]] == [40, 7, 25]
    fresh = RDPAccountant()
    for s in report["segments"]:
        for _ in range(s["steps"]):
            fresh.step(noise_multiplier=s["noise_multiplier"], sample_rate=s["sample_rate"])
    assert report["epsilon"] == pytest.approx(fresh.get_epsilon(delta=report["delta"]), rel=1e-9)
    assert report["accountant"] == "rdp" and report["delta"] == 1e-3


def test_ledger_survives_a_restart_and_keeps_counting(tmp_path: Path) -> None:
    state = tmp_path / "site" / "privacy-state.json"
    ledger = SiteAccountant(accountant="rdp", delta=1e-3, target_epsilon=50.0, state_path=state)
    _steps(ledger, "autoencoder", 0.2, 1.0, 10)
    ledger.derived_noise["diffusion"] = 1.7
    ledger.save()
    eps_before = ledger.epsilon()
    restored = SiteAccountant.load(state, accountant="rdp", delta=1e-3)
    assert restored.epsilon() == pytest.approx(eps_before)
    assert restored.derived_noise == {"diffusion": 1.7}
    _steps(restored, "autoencoder", 0.2, 1.0, 10)
    assert restored.steps == 20 and len(restored.segments) == 1
    assert restored.epsilon() > eps_before
    restored.save()
    assert SiteAccountant.load(state).steps == 20


def test_load_refuses_a_different_delta_accountant_or_a_corrupt_file(tmp_path: Path) -> None:
    ledger = SiteAccountant(accountant="rdp", delta=1e-3, target_epsilon=5.0)
    path = ledger.save(tmp_path / "state.json")
    with pytest.raises(InputError, match="δ"):
        SiteAccountant.load(path, delta=1e-5)
    with pytest.raises(InputError, match="prv"):
        SiteAccountant.load(path, accountant="prv")
    path.write_text("{not json")
    with pytest.raises(InputError, match="state.json"):
        SiteAccountant.load(path)


def test_zero_noise_is_infinite_epsilon_and_default_delta() -> None:
    ledger = SiteAccountant(accountant="rdp", delta=1e-3, target_epsilon=5.0)
    _steps(ledger, "autoencoder", 0.5, 0.0, 1)
    assert math.isinf(ledger.epsilon())
    assert ledger.report()["epsilon"] is None
    assert default_delta(20) == pytest.approx(1 / 200)
    with pytest.raises(ConfigError, match="accountant"):
        SiteAccountant(accountant="moments", delta=1e-3, target_epsilon=1.0)


def test_gdp_refuses_heterogeneous_segments_prv_accepts_them() -> None:
    for kind in ("gdp", "prv"):
        ledger = SiteAccountant(accountant=kind, delta=1e-3, target_epsilon=50.0)
        _steps(ledger, "autoencoder", 0.2, 1.0, 5)
        _steps(ledger, "diffusion", 0.4, 1.0, 5)
        if kind == "gdp":
            with pytest.raises(ConfigError, match="gdp"):
                ledger.epsilon()
        else:
            assert 0 < ledger.epsilon() < 50


def test_budget_refuses_a_plan_past_the_target_before_it_runs() -> None:
    ledger = SiteAccountant(accountant="rdp", delta=1e-3, target_epsilon=2.0)
    plan = [Segment("autoencoder", 0.5, 0.8, 200, 1.0)]
    with pytest.raises(BudgetExhaustedError, match="target ε=2") as exc:
        check_budget(ledger, plan, where="site-a")
    assert "site-a" in str(exc.value)
    assert ledger.steps == 0  # nothing was recorded
    small = [Segment("autoencoder", 0.1, 2.0, 3, 1.0)]
    assert 0 < check_budget(ledger, small) <= 2.0


def test_derived_sigma_matches_opacus_on_a_fresh_ledger() -> None:
    ledger = SiteAccountant(accountant="rdp", delta=1e-4, target_epsilon=3.0)
    plan = [Segment("autoencoder", 0.1, 0.0, 500, 1.0)]
    ours = derive_noise_multiplier(ledger, plan)
    theirs = get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-4, sample_rate=0.1, steps=500, accountant="rdp"
    )
    assert ours == pytest.approx(theirs, rel=0.02)
    assert ledger.epsilon([Segment("autoencoder", 0.1, ours, 500, 1.0)]) <= 3.0


def test_derived_sigma_composes_with_spent_steps_and_two_stages() -> None:
    ledger = SiteAccountant(accountant="rdp", delta=1e-4, target_epsilon=4.0)
    _steps(ledger, "autoencoder", 0.05, 2.0, 100)
    plan = [Segment("autoencoder", 0.05, 0.0, 100, 1.0), Segment("diffusion", 0.1, 0.0, 50, 1.0)]
    sigma = derive_noise_multiplier(ledger, plan)
    planned = [Segment(s.stage, s.sample_rate, sigma, s.steps, 1.0) for s in plan]
    eps = ledger.epsilon(planned)
    assert 4.0 - 0.05 < eps <= 4.0
    exhausted = SiteAccountant(accountant="rdp", delta=1e-4, target_epsilon=0.01)
    _steps(exhausted, "autoencoder", 0.5, 0.5, 50)
    with pytest.raises(BudgetExhaustedError, match="exhausted"):
        derive_noise_multiplier(exhausted, plan)


def test_one_ledger_per_cohort_and_no_silent_reset(tmp_path: Path) -> None:
    from fedcmr4d.data.phantom import write_phantom_cohort
    from fedcmr4d.errors import InputError
    from fedcmr4d.privacy.accounting import cohort_ledger_path, open_cohort_ledger

    cohort = tmp_path / "cohort"
    write_phantom_cohort(cohort, 2, seed=1, image_size=32, slices=6, frames=16)
    kw = {"accountant": "rdp", "delta": 1e-3, "target_epsilon": 50.0}
    ledger = open_cohort_ledger(cohort, **kw)
    _steps(ledger, "autoencoder", 0.5, 1.0, 5)
    ledger.save()
    spent = ledger.epsilon()
    # a second run (another --out folder, or a federated round) continues the same ledger
    again = open_cohort_ledger(cohort, **kw)
    assert again.steps == 5 and again.epsilon() == pytest.approx(spent)
    # the ledger lost: refused, not restarted at 0
    path = cohort_ledger_path(cohort)
    kept = path.read_bytes()
    path.unlink()
    with pytest.raises(InputError, match="refusing to start again at ε = 0"):
        open_cohort_ledger(cohort, **kw)
    path.write_bytes(kept)
    # the cohort changed under the ledger: refused
    index = cohort / "cohort.json"
    index.write_text(index.read_text().replace("{", "{ ", 1))
    with pytest.raises(InputError, match="belongs to cohort"):
        open_cohort_ledger(cohort, **kw)
