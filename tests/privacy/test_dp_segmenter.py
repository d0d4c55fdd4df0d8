"""The segmenter stage under DP-SGD, as a hostile reviewer of the claim would check it.

The claims: every segmenter update is clipped per subject and noised by the site's own DP
optimizer; the Poisson sample (and so the accountant's q) runs over ALL the site's training
subjects, labelled or not; the ledger is the site's one ledger across stages; only (ε, δ) and
the subject count leave the site.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from opacus.optimizers import DPOptimizer

from fedcmr4d.config import load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.privacy.site import SitePrivacy, releasable_metrics
from fedcmr4d.train.trainer import StageTrainer

SMALL = [
    "evaluate.segmenter_features=[8,8,8,8,8,8]",
    "train.segmenter.steps=3",
    "train.segmenter.batch_size=2",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four phantoms; the first has no labels (it is drawn but has no data for this stage)."""
    out = tmp_path_factory.mktemp("dpseg") / "cohort"
    write_phantom_cohort(out, 4, seed=3, image_size=32, slices=6, frames=16)
    (sorted(p for p in out.iterdir() if p.is_dir())[0] / "labels.nii.gz").unlink()
    return out


def _ids(cohort: Path) -> list[str]:
    return sorted(p.name for p in cohort.iterdir() if p.is_dir())


def test_the_dp_segmenter_samples_all_training_subjects_and_moves_only_by_dp_steps(
    cohort: Path, tmp_path: Path
) -> None:
    cfg = load_config("tiny-dp", SMALL)
    state = tmp_path / "ledger.json"
    privacy = SitePrivacy.open(cfg, 4, state_path=state, rounds={"segmenter": 1}, seed=0)
    trainer = StageTrainer("segmenter", cfg, cohort, subject_ids=_ids(cohort), privacy=privacy)
    assert len(trainer.subject_ids) == 3  # trains on the labelled three ...
    assert trainer.impl.population_positions == [None, 0, 1, 2]  # ... samples from all four
    assert all(isinstance(o, DPOptimizer) for o in trainer.optimizers.values())
    before = trainer.get_weights()
    metrics = trainer.train(3)
    after = trainer.get_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    report = json.loads(state.read_text())
    assert [(s["stage"], s["steps"], s["sample_rate"]) for s in report["segments"]] == [
        ("segmenter", 3, 0.5)  # q = batch 2 / 4 training subjects, not / 3 labelled
    ]
    assert metrics["epsilon"] == pytest.approx(report["epsilon"])
    assert set(releasable_metrics(metrics, dp=True)) == {"epsilon", "delta", "num-examples"}


def test_each_subjects_segmenter_gradient_is_clipped(cohort: Path) -> None:
    """Almost no noise and a tiny clip bound: plain SGD (lr 1) then moves the weights by at
    most (drawn subjects / expected batch) x C per step (+ the noise, here ~1e-6); unclipped it
    would move by far more. (σ = 0 itself is refused: ε would be infinite.)"""
    clip = 1e-4
    cfg = load_config(
        "tiny-dp",
        [
            *SMALL,
            "privacy.noise_multiplier=0.001",
            "privacy.target_epsilon=1e12",
            f"privacy.max_grad_norm={clip}",
            "privacy.optimizer=sgd",
            "privacy.sgd_lr=1.0",
            "privacy.sgd_momentum=0",
        ],
    )
    privacy = SitePrivacy.open(cfg, 4, rounds={"segmenter": 1}, seed=1)
    trainer = StageTrainer("segmenter", cfg, cohort, subject_ids=_ids(cohort), privacy=privacy)
    before = trainer.get_weights()
    trainer.train(3)
    after = trainer.get_weights()
    moved = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before))
    assert 0 < float(moved) <= 3 * (4 / 2) * clip * 1.1

    unclipped = load_config("tiny", SMALL)  # the same stage without DP moves far more
    plain = StageTrainer("segmenter", unclipped, cohort, subject_ids=_ids(cohort))
    plain.set_weights(before)
    plain.train(1)
    free = torch.sqrt(sum(((plain.get_weights()[k] - before[k]) ** 2).sum() for k in before))
    assert float(free) > 100 * float(moved)


def test_the_segmenter_spends_from_the_same_ledger_as_the_generator(
    cohort: Path, tmp_path: Path
) -> None:
    cfg = load_config("tiny-dp", SMALL)
    state = tmp_path / "ledger.json"
    ids = _ids(cohort)
    first = SitePrivacy.open(cfg, 4, state_path=state, seed=2)
    StageTrainer("autoencoder", cfg, cohort, subject_ids=ids, privacy=first).train(1)
    eps_generator = json.loads(state.read_text())["epsilon"]
    later = SitePrivacy.open(cfg, 4, state_path=state, rounds={"segmenter": 1}, seed=3)
    StageTrainer("segmenter", cfg, cohort, subject_ids=ids, privacy=later).train(1)
    report = json.loads(state.read_text())
    assert [s["stage"] for s in report["segments"]] == ["autoencoder", "segmenter"]
    assert report["epsilon"] > eps_generator


def test_a_plan_without_the_segmenter_keeps_no_budget_for_it() -> None:
    cfg = load_config("tiny-dp", [*SMALL, "privacy.noise_multiplier=null"])
    without = SitePrivacy.open(cfg, 4, rounds={"autoencoder": 1, "diffusion": 1}, seed=0)
    assert "segmenter" not in {s.stage for s in without._remaining_plan("autoencoder", 0)}
    planned = SitePrivacy.open(
        cfg, 4, rounds={"autoencoder": 1, "diffusion": 1, "segmenter": 2}, seed=0
    )
    segments = {s.stage: s.steps for s in planned._remaining_plan("autoencoder", 0)}
    assert segments["segmenter"] == 2 * 3
    # More planned steps, same budget: more noise for every stage.
    assert planned.noise_multiplier("autoencoder") > without.noise_multiplier("autoencoder")
    # A stage asked although unplanned still gets (at least) the round about to run.
    assert [s.steps for s in without._remaining_plan("segmenter", 0)] == [3]
