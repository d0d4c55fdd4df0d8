"""Membership inference on the model's own loss: an overfitted model fails, a normal one passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcmr4d.audit.membership import (
    combine_membership,
    membership_from_checkpoint,
    site_membership,
)
from fedcmr4d.audit.split import write_split
from fedcmr4d.config import AuditConfig, load_config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.train.local import train_local


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("membership")
    write_phantom_cohort(root / "cohort", 12, 3, image_size=32, slices=6, frames=16, id_prefix="p")
    write_phantom_cohort(root / "synthetic", 2, 77, image_size=32, slices=6, frames=16,
                         id_prefix="syn")  # fmt: skip
    return root


def _train(root: Path, name: str, steps: int, lr: float) -> Path:
    cfg = load_config(
        "tiny",
        [
            "data.holdout_fraction=0.5",  # 6 training / 6 holdout subjects
            f"train.autoencoder.steps={steps}",
            "train.autoencoder.batch_size=6",
            f"train.autoencoder.lr={lr}",
            "autoencoder.adversarial_weight=0",
        ],
    )
    train_local("autoencoder", cfg, root / "cohort", root / name, progress=False)
    if not (root / "split").exists():
        write_split(cfg, root / "cohort", root / "split")
    return root / name


@pytest.mark.slow
def test_overfitted_model_fails_and_normal_one_passes(phantom: Path, run_cli: Any):
    config = AuditConfig()
    split = phantom / "split"
    overfit = _train(phantom, "overfit", 100, 3e-3)  # 6 subjects, 100 steps: memorised
    result = combine_membership(
        [membership_from_checkpoint(overfit, [split / "train"], [split / "holdout"], config)],
        config,
    )
    assert result is not None and result["passed"] is False
    assert result["auc"] > 0.9 and result["p_value"] < config.membership_alpha
    assert "beats chance" in result["reason"]

    normal = _train(phantom, "normal", 4, 1e-3)  # the tiny config's 4 steps
    code, text = run_cli(
        "audit", "--synthetic", phantom / "synthetic", "--train", split / "train",
        "--holdout", split / "holdout", "--out", phantom / "audit.json", "--checkpoint", normal,
    )  # fmt: skip
    audit = json.loads((phantom / "audit.json").read_text())
    membership = audit["membership"]
    assert membership["passed"] is True, membership
    assert (membership["n_members"], membership["n_nonmembers"]) == (6, 6)
    assert 0.0 <= membership["auc"] <= 1.0 and 0.0 <= membership["tpr_at_1pct_fpr"] <= 1.0
    assert "membership AUC" in text


def test_sites_pool_rank_statistics_not_losses():
    rng = np.random.default_rng(0)
    sites = [
        site_membership({"diffusion": rng.normal(0, 1, 30)}, {"diffusion": rng.normal(1, 1, 30)})
        for _ in range(3)
    ]
    assert set(sites[0]["stages"]["diffusion"]) == {
        "n_members", "n_nonmembers", "u", "p_value", "tpr_count"
    }  # fmt: skip
    pooled = combine_membership(sites, AuditConfig())
    assert pooled is not None and pooled["n_members"] == 90 and pooled["auc"] > 0.7
    assert pooled["passed"] is False and pooled["p_value"] < 1e-6
    same = [
        site_membership({"diffusion": rng.normal(0, 1, 30)}, {"diffusion": rng.normal(0, 1, 30)})
        for _ in range(3)
    ]
    assert combine_membership(same, AuditConfig())["passed"] is True  # type: ignore[index]
    assert combine_membership([None, None], AuditConfig()) is None


def test_stack_losses_fixed_draws_per_stack_whatever_the_other_subjects():
    """A subject's score is its own: the same alone, beside others, in any batch; the j-th
    stack of every subject sees the same draws, so identical subjects score the same."""
    import torch

    from fedcmr4d.audit import membership
    from fedcmr4d.models.losses import diffusion_losses_at
    from fedcmr4d.schedulers import build_train_scheduler
    from fedcmr4d.train.models import build_denoiser

    cfg = load_config("tiny")
    torch.manual_seed(0)
    unet = build_denoiser(cfg).eval()
    scheduler = build_train_scheduler(cfg.diffusion)
    shape = (48, 4, 4, 2)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn((2, *shape), generator=g), torch.randn((1, *shape), generator=g)
    empty = torch.zeros((0, *shape))
    together = membership.stack_losses(unet, scheduler, [a, b, a, empty], 3, 1.0)
    alone = membership.stack_losses(unet, scheduler, [a], 3, 1.0)
    assert together[0] == pytest.approx(together[2], rel=1e-6)
    assert together[0] == pytest.approx(alone[0], rel=1e-5)
    assert together[0] != pytest.approx(together[1], rel=1e-3)
    assert np.isnan(together[3])
    noise, timesteps = membership.fixed_draws(shape, 2, 3, scheduler.num_train_timesteps)
    by_hand = [
        float(
            diffusion_losses_at(
                unet, scheduler, a[j : j + 1], noise[j, d : d + 1], timesteps[j, d : d + 1], 1.0
            )
        )
        for j in range(2)
        for d in range(3)
    ]
    assert together[0] == pytest.approx(np.mean(by_hand), rel=1e-5)
    membership.SCORE_BATCH_ELEMENTS, saved = shape[0] * 4 * 4 * 2, membership.SCORE_BATCH_ELEMENTS
    try:  # one term per denoiser call: the same scores
        one_by_one = membership.stack_losses(unet, scheduler, [a, b, a, empty], 3, 1.0)
    finally:
        membership.SCORE_BATCH_ELEMENTS = saved
    np.testing.assert_allclose(one_by_one[:3], together[:3], rtol=1e-5)
