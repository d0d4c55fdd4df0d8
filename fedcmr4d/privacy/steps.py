"""DP training steps for :class:`~fedcmr4d.train.trainer.StageTrainer`, subject as privacy unit.

The trainer's own loss methods are reused unchanged; what differs from a non-DP step:

* each DP optimizer step draws its OWN Poisson sample of subjects (stage 1: one for the
  generator, one for the discriminator), so every step is one subsampled Gaussian mechanism and
  the accountant's composition is exact. Reusing one sample for both would be a single release
  of sensitivity sqrt(2)·C, which counting two independent steps would under-account;
* the loss is evaluated per subject (its k slices or latent stacks as a batch of k) under
  ``torch.func.vmap``; Opacus's ``DPOptimizer`` clips each subject's gradient, adds noise and
  averages over the expected batch size;
* the discriminator's fakes are the generator's reconstructions of the discriminator's own
  sampled subjects, computed without gradient (the generator's weights are a DP release);
* the trainer's global-norm gradient clip is not applied: per-subject clipping replaces it;
* the Poisson batch size is not put in the metrics (it depends on who was sampled; the
  accountant assumes only the noised sum is released): it is kept in ``engine.last_batch_size``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedcmr4d.errors import ConfigError
from fedcmr4d.privacy.engine import SubjectDP

if TYPE_CHECKING:
    from fedcmr4d.train.trainer import StageTrainer


def check_trainer_supported(trainer: StageTrainer) -> None:
    """Refuse settings the DP step does not implement, naming the config key."""
    accum = trainer.train_cfg.grad_accumulation
    if accum != 1:
        raise ConfigError(
            f"train.{trainer.stage}.grad_accumulation: {accum} is not supported under DP "
            "(raise batch_size instead; per-subject gradients are computed in chunks)"
        )


def use_sgd(trainer: StageTrainer, *, lr: float, momentum: float) -> None:
    """Replace the trainer's optimizers by SGD with momentum (``privacy.optimizer: sgd``).

    Adam divides each coordinate by its own RMS, so coordinates where the DP noise dominates
    (most of them at small batches) all move by about lr per step; SGD keeps their step in
    proportion to the noise, which averages out. On the phantom (docs/privacy.md) it lowered
    the DP training L1 where AdamW did not move it.
    """
    for name, model in trainer.models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        trainer.optimizers[name] = optimizer
        trainer.lr_schedulers[name] = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def subjects_batch(trainer: StageTrainer, indices: list[int]) -> Tensor:
    """(B, k, ...) items of the sampled subjects (B may be 0), on the trainer's device."""
    dataset = trainer.dataset
    if hasattr(dataset, "epoch"):
        dataset.epoch = trainer.global_step  # fresh slice/window draws each step
    if indices:
        batch = torch.stack([dataset[i] for i in indices])
    else:
        item = dataset[0]
        batch = item.new_zeros((0, *item.shape))
    return trainer._to_device(batch)


def _optimizer_step(trainer: StageTrainer, name: str) -> None:
    trainer.optimizers[name].step()
    trainer.lr_schedulers[name].step()
    trainer.optimizers[name].zero_grad(set_to_none=True)


def _mean(values: Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def _collect(metrics: dict[str, float], parts: dict[str, Tensor]) -> None:
    for key, values in parts.items():
        mean = _mean(values)
        if mean is not None:
            metrics[key] = mean


def autoencoder_step(trainer: StageTrainer, engine: SubjectDP) -> dict[str, float]:
    """One DP generator step and, once the adversarial loss is on, one DP discriminator step."""
    generator = trainer.models["autoencoder"]
    adversarial = trainer.adversarial_on()
    metrics: dict[str, float] = {}

    def generator_loss(x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        with trainer._autocast():
            losses = trainer.autoencoder_losses(x, adversarial)
        parts = {k: v for k, v in losses.items() if k not in ("loss", "reconstruction")}
        return losses["loss"], parts

    indices = engine.draw()
    x = subjects_batch(trainer, indices)
    discriminator = trainer.models["discriminator"]
    discriminator.requires_grad_(False)  # a constant inside the generator's loss
    try:
        losses, parts = engine.backward(generator, generator_loss, x)
    finally:
        discriminator.requires_grad_(True)
    _optimizer_step(trainer, "autoencoder")
    _collect(metrics, parts)
    if (mean := _mean(losses)) is not None:
        metrics["loss"] = mean
    if adversarial:
        x = subjects_batch(trainer, engine.draw())
        with torch.no_grad(), trainer._autocast():
            fakes = (
                generator(trainer.flatten(x)).reconstruction.reshape(x.shape)
                if x.shape[0]
                else torch.zeros_like(x)
            )

        def discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
            with trainer._autocast():
                return trainer.discriminator_losses(real, fake)

        d_losses, _ = engine.backward(discriminator, discriminator_loss, x, fakes.to(x.dtype))
        _optimizer_step(trainer, "discriminator")
        if (mean := _mean(d_losses)) is not None:
            metrics["adv_d"] = mean
    return metrics


def diffusion_step(trainer: StageTrainer, engine: SubjectDP) -> dict[str, float]:
    """One DP step of the UNet on a Poisson sample of subjects' latent stacks."""
    unet = trainer.models["unet"]

    def loss_fn(latent_stacks: Tensor) -> Tensor:
        with trainer._autocast():
            return trainer.diffusion_losses(latent_stacks)

    indices = engine.draw()
    x = subjects_batch(trainer, indices)
    losses, _ = engine.backward(unet, loss_fn, x)
    _optimizer_step(trainer, "unet")
    trainer._update_ema()
    metrics: dict[str, float] = {}
    if (mean := _mean(losses)) is not None:
        metrics["loss"] = mean
    return metrics
