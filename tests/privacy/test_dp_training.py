"""DP through the real trainer and the real CLI: budgets, ledger across restarts and stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer

from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import BudgetExhaustedError, ConfigError
from fedcmr4d.privacy.accounting import SiteAccountant
from fedcmr4d.privacy.guards import check_dp_model
from fedcmr4d.privacy.site import SitePrivacy, releasable_metrics
from fedcmr4d.train.models import build_autoencoder, build_denoiser, build_discriminator
from fedcmr4d.train.trainer import StageTrainer


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp") / "cohort"
    write_phantom_cohort(out, 6, seed=0, image_size=32, slices=6, frames=16)
    return out


def _replayed_epsilon(report: dict) -> float:
    fresh = RDPAccountant()
    for segment in report["segments"]:
        for _ in range(segment["steps"]):
            fresh.step(
                noise_multiplier=segment["noise_multiplier"], sample_rate=segment["sample_rate"]
            )
    return float(fresh.get_epsilon(delta=report["delta"]))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fedcmr4d", *args], capture_output=True, text=True, env=env
    )


def test_product_models_pass_the_dp_guards() -> None:
    cfg = load_config("tiny-dp")
    check_dp_model(build_autoencoder(cfg), name="autoencoder")
    check_dp_model(build_discriminator(cfg), name="discriminator")
    check_dp_model(build_denoiser(cfg), name="unet")


def test_every_stage_one_parameter_moves_only_through_dp_optimizers(cohort: Path) -> None:
    cfg = load_config("tiny-dp", ["autoencoder.adversarial_start_step=0"])
    privacy = SitePrivacy.open(cfg, 6, seed=0)
    trainer = StageTrainer("autoencoder", cfg, cohort, privacy=privacy)
    assert all(isinstance(o, DPOptimizer) for o in trainer.optimizers.values())
    before = trainer.get_weights()
    metrics = trainer.train(1)
    after = trainer.get_weights()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"autoencoder", "discriminator"}
    assert not torch.equal(
        before["autoencoder.quantizer.codebook"], after["autoencoder.quantizer.codebook"]
    )
    assert privacy.ledger.steps == 2  # one generator and one discriminator step
    assert metrics["epsilon"] == pytest.approx(privacy.ledger.epsilon())
    assert metrics["delta"] == pytest.approx(1 / 60)
    assert "l1" in metrics  # for the site's own curves, not for the coordinator:
    assert set(releasable_metrics(metrics, dp=True)) == {"epsilon", "delta", "num-examples"}


def test_ledger_survives_a_restart_and_spans_both_stages(cohort: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny-dp")
    state = tmp_path / "site" / "privacy-state.json"
    first = SitePrivacy.open(cfg, 6, state_path=state, seed=1)
    ae = StageTrainer("autoencoder", cfg, cohort, privacy=first)
    ae.train(1)
    eps_round_1 = json.loads(state.read_text())["epsilon"]
    restarted = SitePrivacy.open(cfg, 6, state_path=state, seed=2)  # a new process's view
    assert restarted.ledger.steps == 1 and restarted.metrics()["epsilon"] == eps_round_1
    ae2 = StageTrainer("autoencoder", cfg, cohort, privacy=restarted)
    ae2.train(1)
    ldm = StageTrainer(
        "diffusion", cfg, cohort, autoencoder_weights=ae2.get_weights(), privacy=restarted
    )
    ldm.train(1)
    report = json.loads(state.read_text())
    assert [(s["stage"], s["steps"]) for s in report["segments"]] == [
        ("autoencoder", 2),
        ("diffusion", 1),
    ]
    assert report["epsilon"] > eps_round_1
    assert report["epsilon"] == pytest.approx(_replayed_epsilon(report), rel=1e-9)


def test_a_round_past_the_budget_is_refused_before_any_step(cohort: Path) -> None:
    cfg = load_config("tiny-dp", ["privacy.target_epsilon=1.0"])
    privacy = SitePrivacy.open(cfg, 6, seed=0, site="site-b")
    trainer = StageTrainer("autoencoder", cfg, cohort, privacy=privacy)
    before = trainer.get_weights()
    with pytest.raises(BudgetExhaustedError, match="site-b: privacy budget exhausted"):
        trainer.train(50)
    assert privacy.ledger.steps == 0
    assert all(torch.equal(v, trainer.get_weights()[k]) for k, v in before.items())


def test_null_noise_multiplier_is_derived_from_the_budget_and_the_plan(cohort: Path) -> None:
    cfg = load_config("tiny-dp", ["privacy.noise_multiplier=null", "privacy.target_epsilon=8.0"])
    privacy = SitePrivacy.open(cfg, 6, seed=0, rounds={"autoencoder": 2, "diffusion": 2})
    sigma = privacy.noise_multiplier("autoencoder")
    # the whole plan (2 rounds of both stages, generator + discriminator steps) fits 8.0
    plan = privacy._remaining_plan("autoencoder", 0)
    # 8 generator steps, discriminator steps from global step 2 on (6), 8 UNet steps
    assert sum(s.steps for s in plan) == 8 + 6 + 8
    full = [type(s)(s.stage, s.sample_rate, sigma, s.steps, s.max_grad_norm) for s in plan]
    assert 7.9 < privacy.ledger.epsilon(full) <= 8.0
    trainer = StageTrainer("autoencoder", cfg, cohort, privacy=privacy)
    assert all(o.noise_multiplier == sigma for o in trainer.optimizers.values())  # type: ignore[attr-defined]
    assert privacy.ledger.derived_noise == {"autoencoder": sigma}


@pytest.mark.slow
def test_cli_dp_training_writes_a_replayable_privacy_log(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "ae"
    done = _cli(
        "train",
        "autoencoder",
        "--config",
        "tiny-dp",
        "--data",
        str(cohort),
        "--out",
        str(out),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "privacy.json").read_text())
    assert report["accountant"] == "rdp" and report["delta"] == pytest.approx(1 / 40)
    assert report["epsilon"] == pytest.approx(_replayed_epsilon(report), rel=1e-9)
    assert sum(s["steps"] for s in report["segments"]) == 4 + 2  # G steps + D steps (from 2)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["privacy"]["epsilon"] == pytest.approx(report["epsilon"])
    assert SiteAccountant.load(out / "privacy.json").epsilon() == pytest.approx(report["epsilon"])


@pytest.mark.slow
def test_cli_refuses_training_past_the_budget_with_exit_6(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    done = _cli(
        "train",
        "autoencoder",
        "--config",
        "tiny-dp",
        "--data",
        str(cohort),
        "--out",
        str(out),
        "--set",
        "privacy.target_epsilon=0.05",
        "--quiet",
    )
    assert done.returncode == 6, done.stderr
    assert "privacy budget exhausted" in done.stderr and "target ε=0.05" in done.stderr
    assert not (out / "model.safetensors").exists()


def test_a_dp_config_without_the_privacy_hook_refuses_to_train(cohort: Path) -> None:
    trainer = StageTrainer("autoencoder", load_config("tiny-dp"), cohort)
    with pytest.raises(ConfigError, match="refusing to train without DP-SGD"):
        trainer.train(1)
    assert trainer.global_step == 0


def test_unimplemented_grad_sample_modes_are_refused() -> None:
    for mode in ("hooks", "ghost"):
        with pytest.raises(
            ConfigError, match="privacy.grad_sample_mode: must be one of 'functorch'"
        ):
            load_config("tiny-dp", [f"privacy.grad_sample_mode={mode}"])
    assert load_config("tiny-dp").privacy.grad_sample_mode == "functorch"


def test_sgd_option_replaces_the_optimizers_under_dp(cohort: Path) -> None:
    cfg = load_config("tiny-dp", ["privacy.optimizer=sgd", "privacy.sgd_lr=0.05"])
    trainer = StageTrainer("autoencoder", cfg, cohort, privacy=SitePrivacy.open(cfg, 6, seed=0))
    for optimizer in trainer.optimizers.values():
        assert isinstance(optimizer, DPOptimizer)
        assert isinstance(optimizer.original_optimizer, torch.optim.SGD)
        assert optimizer.param_groups[0]["lr"] == 0.05
