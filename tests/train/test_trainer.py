"""StageTrainer: the weight-exchange contract, training, evaluation, stage 2 on stage-1 weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.optimizers import DPOptimizer

from fedcmr4d.config import Config, load_config
from fedcmr4d.data.datasets import cine_slices, load_cines
from fedcmr4d.privacy.engine import SubjectDP
from fedcmr4d.privacy.protocol import Privacy
from fedcmr4d.privacy.site import SitePrivacy
from fedcmr4d.stages import Stage
from fedcmr4d.train.trainer import StageTrainer


@pytest.fixture()
def ae_trainer(tiny_cohort: Path, tiny_cfg: Config) -> StageTrainer:
    return StageTrainer(
        "autoencoder", tiny_cfg, tiny_cohort, subject_ids=["phantom000", "phantom001"]
    )


def test_weights_are_cpu_float_parameters_in_fixed_order(ae_trainer: StageTrainer) -> None:
    weights = ae_trainer.get_weights()
    assert list(weights) == list(ae_trainer.get_weights())
    assert {k.split(".")[0] for k in weights} == {"autoencoder", "discriminator"}
    assert "autoencoder.quantizer.codebook" in weights
    n_params = sum(1 for m in ae_trainer.models.values() for _ in m.parameters())
    assert len(weights) == n_params
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in weights.values())
    assert ae_trainer.num_subjects == 2


def test_set_weights_is_strict(ae_trainer: StageTrainer) -> None:
    weights = ae_trainer.get_weights()
    key = "autoencoder.quantizer.codebook"
    with pytest.raises(ValueError, match="lack"):
        ae_trainer.set_weights({k: v for k, v in weights.items() if k != key})
    with pytest.raises(ValueError, match="unexpected.*extra"):
        ae_trainer.set_weights({**weights, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=f"{key}.*shape"):
        ae_trainer.set_weights({**weights, key: torch.zeros(3, 3)})
    changed = {k: v + 1.0 for k, v in weights.items()}
    ae_trainer.set_weights(changed)
    assert all(torch.equal(changed[k], v) for k, v in ae_trainer.get_weights().items())


def test_train_counts_steps_and_turns_adversarial_on(
    ae_trainer: StageTrainer, tiny_cohort: Path, tiny_cfg: Config
) -> None:
    start = ae_trainer.cfg.autoencoder.adversarial_start_step  # 2 in tiny
    before = ae_trainer.get_weights()
    first = ae_trainer.train(start)
    assert ae_trainer.global_step == start
    assert "adv_g" not in first and first["num-examples"] == 2.0
    assert {"l1", "codebook", "commitment", "entropy", "perplexity", "loss"} <= set(first)
    second = ae_trainer.train(1)
    assert ae_trainer.global_step == start + 1
    assert "adv_g" in second and "adv_d" in second
    after = ae_trainer.get_weights()
    assert not torch.equal(
        before["autoencoder.quantizer.codebook"], after["autoencoder.quantizer.codebook"]
    )
    assert not torch.equal(
        before["discriminator.net.final_conv.conv.weight"],
        after["discriminator.net.final_conv.conv.weight"],
    )
    metrics = ae_trainer.evaluate(["phantom003"])
    assert metrics["psnr"] > 0 and 1 <= metrics["perplexity"] <= 64
    assert metrics["codes_used"] + metrics["dead_codes"] == 64
    # the latent diagnostics, recomputed through the stage-2 encoding path
    _, (cine,) = load_cines(
        tiny_cohort,
        ["phantom003"],
        image_size=tiny_cfg.data.image_size,
        frames=tiny_cfg.data.frames,
    )
    model = ae_trainer.models["autoencoder"].eval()
    with torch.no_grad():
        x = cine_slices(cine)
        codes = model.encode_stage_2_inputs(x)  # (Z, D, h, w, t) unit codes
        indices = model.quantizer.similarity(model.encode(x)).argmax(-1)  # (Z, P)
    per_slice = [len(torch.unique(row)) for row in indices]
    assert metrics["codes_per_slice"] == pytest.approx(sum(per_slice) / len(per_slice))
    cosine = (codes[..., 1:] * codes[..., :-1]).sum(dim=1).mean()
    assert metrics["latent_frame_cosine"] == pytest.approx(float(cosine), abs=1e-5)


def test_stage_two_on_stage_one_weights(
    ae_trainer: StageTrainer, tiny_cohort: Path, tiny_cfg: Config
) -> None:
    with pytest.raises(ValueError, match="autoencoder_weights"):
        StageTrainer("diffusion", tiny_cfg, tiny_cohort)
    tiny_cfg.train.diffusion.ema_decay = 0.5
    tiny_cfg.train.diffusion.grad_accumulation = 2
    trainer = StageTrainer(
        "diffusion", tiny_cfg, tiny_cohort, autoencoder_weights=ae_trainer.get_weights()
    )
    assert trainer.dataset[0].shape == (1, 48, 8, 8, 4)
    assert trainer.impl.latent_scale == pytest.approx(
        ae_trainer.models["autoencoder"].quantizer.latent_scale()
    )
    weights = trainer.get_weights()
    assert weights and all(k.startswith("unet.") for k in weights)
    metrics = trainer.train(1)
    assert trainer.global_step == 1 and metrics["num-examples"] == 4.0
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    ema, now = trainer.ema_weights(), trainer.get_weights()
    assert list(ema) == [f"ema.{k}" for k in now]
    moved = [k for k in now if not torch.equal(now[k], weights[k])]
    assert moved and all(
        # first update: decay warmed up to min(0.5, 1 / 10)
        torch.allclose(ema[f"ema.{k}"], 0.1 * weights[k] + 0.9 * now[k], atol=1e-6)
        for k in moved
    )
    assert set(trainer.evaluate(["phantom002"])) == {"val_loss", "num-examples"}


def test_privacy_object_is_attached_through_the_protocol(tiny_cohort: Path) -> None:
    cfg = load_config("tiny-dp")
    calls: list[tuple[str, Stage]] = []

    class Recording(SitePrivacy):
        """The site's real privacy side, recording what the loop asks of it."""

        def attach(self, stage: Stage, **kwargs: Any) -> SubjectDP:
            calls.append(("attach", stage))
            assert set(kwargs["models"]) == {"autoencoder", "discriminator"}
            return super().attach(stage, **kwargs)

        def before_train(self, stage: Stage, *, steps: int, start_step: int) -> None:
            calls.append(("before_train", stage))
            super().before_train(stage, steps=steps, start_step=start_step)

    base = SitePrivacy.open(cfg, 4, seed=0)
    privacy = Recording(cfg, base.ledger, n_subjects=4, seed=0)
    assert isinstance(privacy, Privacy)
    trainer = StageTrainer("autoencoder", cfg, tiny_cohort, privacy=privacy)
    assert trainer.engine is privacy.engines[Stage.AUTOENCODER]
    assert all(isinstance(o, DPOptimizer) for o in trainer.optimizers.values())
    trainer.train(1)
    assert calls == [("attach", Stage.AUTOENCODER), ("before_train", Stage.AUTOENCODER)]
    assert privacy.ledger.steps == 1  # the stage's DP step went through the engine's optimizer


def test_an_object_that_is_not_a_privacy_is_refused(tiny_cohort: Path, tiny_cfg: Config) -> None:
    class AttachOnly:
        def attach(self, stage: Stage, **kwargs: Any) -> None:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="lacks attach, before_train"):
        StageTrainer("autoencoder", tiny_cfg, tiny_cohort, privacy=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lacks before_train, after_train, checkpoint_meta"):
        StageTrainer("autoencoder", tiny_cfg, tiny_cohort, privacy=AttachOnly())  # type: ignore[arg-type]


def _lrs_of(trainer: StageTrainer, steps: int) -> list[float]:
    """The autoencoder optimizer's lr used by each of the next ``steps`` steps."""
    seen = []
    for _ in range(steps):
        seen.append(trainer.optimizers["autoencoder"].param_groups[0]["lr"])
        trainer.train(1)
    return seen


def test_lr_schedule_follows_the_stage_step_across_rebuilt_trainers(tiny_cohort: Path) -> None:
    # A federated site builds its trainer anew every round and sets global_step: the warm-up
    # must not start again, and the cosine decay must reach min_lr_ratio at the stage's end.
    cfg = load_config(
        "tiny",
        [
            "train.autoencoder.warmup_steps=2",
            "train.autoencoder.lr_schedule=cosine",
            "train.autoencoder.min_lr_ratio=0.1",
            "autoencoder.adversarial_start_step=100",
        ],
    )
    ids = ["phantom000", "phantom001"]
    straight = StageTrainer("autoencoder", cfg, tiny_cohort, subject_ids=ids)
    straight.total_steps = 6
    whole = _lrs_of(straight, 6)
    first = StageTrainer("autoencoder", cfg, tiny_cohort, subject_ids=ids)
    first.total_steps = 6
    rounds = _lrs_of(first, 3)
    second = StageTrainer("autoencoder", cfg, tiny_cohort, subject_ids=ids)
    second.total_steps = 6
    second.global_step = 3
    rounds += _lrs_of(second, 3)
    lr = cfg.train.autoencoder.lr
    assert rounds == pytest.approx(whole)
    assert whole[0] == pytest.approx(lr / 2) and whole[1] == pytest.approx(lr)
    assert whole[-1] == pytest.approx(0.1 * lr)
    assert whole[1] > whole[3] > whole[5]


def test_an_epochs_batches_depend_on_seed_and_epoch_alone(tiny_cohort: Path) -> None:
    """A resumed run or a federated round starting at an epoch draws what an unbroken run does."""
    cfg = load_config("tiny", ["train.autoencoder.batch_size=1"])
    unbroken = StageTrainer("autoencoder", cfg, tiny_cohort)
    first = [unbroken.next_batch() for _ in range(unbroken.steps_per_epoch)]
    second = [unbroken.next_batch() for _ in range(unbroken.steps_per_epoch)]
    later = StageTrainer("autoencoder", cfg, tiny_cohort)
    later.start_at_epoch(1)
    assert all(torch.equal(a, later.next_batch()) for a in second)
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other_seed = StageTrainer(
        "autoencoder",
        load_config("tiny", ["seed=1", "train.autoencoder.batch_size=1"]),
        tiny_cohort,
    )
    other_seed.start_at_epoch(1)
    assert not all(torch.equal(a, other_seed.next_batch()) for a in second)
