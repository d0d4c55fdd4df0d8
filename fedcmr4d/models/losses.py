"""Stage-1 losses: reconstruction, adversarial, perceptual (local weights only).

Each loss is a small function of tensors, a mean over the batch, so a per-sample-gradient
wrapper (Opacus) sees a loss that decomposes per sample. The quantizer's codebook, commitment
and entropy losses live in :mod:`fedcmr4d.models.quantizer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler
from torch import Tensor, nn

from fedcmr4d.errors import ConfigError
from fedcmr4d.schedulers import diffusion_target, min_snr_weights

log = logging.getLogger(__name__)

AdversarialKind = Literal["least_squares", "hinge"]


def reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error (L1) between (N, C, H, W, T) tensors."""
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction {tuple(reconstruction.shape)} != target {tuple(target.shape)}"
        )
    return F.l1_loss(reconstruction, target)


def generator_adversarial_loss(fake_logits: Tensor, kind: AdversarialKind) -> Tensor:
    """Loss of the generator for discriminator logits on its reconstructions."""
    if kind == "least_squares":
        return F.mse_loss(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"kind must be 'least_squares' or 'hinge', got {kind!r}")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, kind: AdversarialKind) -> Tensor:
    """Loss of the discriminator (real -> 1, fake -> 0 for least squares; margins for hinge)."""
    if kind == "least_squares":
        real = F.mse_loss(real_logits, torch.ones_like(real_logits))
        fake = F.mse_loss(fake_logits, torch.zeros_like(fake_logits))
        return 0.5 * (real + fake)
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    raise ValueError(f"kind must be 'least_squares' or 'hinge', got {kind!r}")


class PerceptualLoss(nn.Module):
    """Feature distance under a frozen 2D network loaded from a local TorchScript file.

    Nothing is downloaded: the network is whatever ``torch.jit.save`` wrote to ``weights_path``
    (e.g. an exported LPIPS/VGG or RadImageNet trunk). It must map (M, 3, H, W) images in [0, 1]
    to a (M, F, h, w) feature map. Frames of every slice are scored as 2D images ("2.5D").

    Shapes:
        ``forward(reconstruction, target)``: two (N, 1, H, W, T) -> scalar.
    """

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise ConfigError(
                f"{path}: autoencoder.perceptual_weights_path does not exist (perceptual loss "
                "weights are read from a local TorchScript file, never downloaded)"
            )
        try:
            self.net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises several types for a bad archive
            raise ConfigError(f"{path}: not a TorchScript file ({exc})") from None
        self.net.eval()
        for param in self.net.parameters():
            param.requires_grad_(False)

    @staticmethod
    def _frames(x: Tensor) -> Tensor:
        n, c, h, w, t = x.shape
        frames = x.permute(0, 4, 1, 2, 3).reshape(n * t, c, h, w)
        return frames.expand(-1, 3, -1, -1) if c == 1 else frames

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        fake = self.net(self._frames(reconstruction))
        real = self.net(self._frames(target))
        return F.l1_loss(fake, real)


def build_perceptual_loss(weight: float, weights_path: str | None) -> PerceptualLoss | None:
    """The perceptual loss if configured; ``None`` (with one warning) when weights are absent."""
    if weight <= 0:
        return None
    if weights_path is None:
        log.warning(
            "autoencoder.perceptual_weight=%s but autoencoder.perceptual_weights_path is not set: "
            "perceptual loss is off (weights are only read from a local file)",
            weight,
        )
        return None
    return PerceptualLoss(weights_path)


def diffusion_loss(
    unet: Callable[..., Tensor],
    scheduler: DDPMScheduler,
    clean: Tensor,
    *,
    huber_delta: float,
    generator: torch.Generator | None = None,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """Huber loss of the UNet's prediction at uniformly random timesteps.

    Args:
        unet: denoiser ``unet(x=noisy, timesteps=t)``.
        scheduler: training schedule.
        clean: (N, C, h, w, t) scaled latent stacks.
        huber_delta: Huber transition point (smooth L1 on v for delta = 1).
        generator: optional generator for reproducible noise and timesteps (validation).
        min_snr_gamma: weight each sample's loss by
            :func:`~fedcmr4d.schedulers.min_snr_weights` (None: every timestep weighs 1).
            Each sample's loss still depends on that sample alone, as DP-SGD needs.
    """
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    timesteps = torch.randint(
        0,
        scheduler.num_train_timesteps,
        (clean.shape[0],),
        generator=generator,
        device=clean.device,
    )
    prediction, target = _prediction_and_target(unet, scheduler, clean, noise, timesteps)
    if min_snr_gamma is None:
        return F.huber_loss(prediction, target, delta=huber_delta)
    per_sample = F.huber_loss(prediction, target, delta=huber_delta, reduction="none")
    per_sample = per_sample.flatten(1).mean(dim=1)
    return (per_sample * min_snr_weights(scheduler, timesteps, min_snr_gamma)).mean()


def _prediction_and_target(
    unet: Callable[..., Tensor],
    scheduler: DDPMScheduler,
    clean: Tensor,
    noise: Tensor,
    timesteps: Tensor,
) -> tuple[Tensor, Tensor]:
    """The UNet's float32 prediction at ``clean`` noised to ``timesteps``, and its target."""
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction = unet(x=noisy, timesteps=timesteps)
    return prediction.float(), diffusion_target(scheduler, clean, noise, timesteps).float()


def diffusion_losses_at(
    unet: Callable[..., Tensor],
    scheduler: DDPMScheduler,
    clean: Tensor,
    noise: Tensor,
    timesteps: Tensor,
    huber_delta: float,
) -> Tensor:
    """(N,) mean Huber loss of each sample at the given noise (N, C, h, w, t) and timesteps
    (N,): the per-sample terms of :func:`diffusion_loss` (every sample has the same number of
    elements, so their mean is its loss)."""
    prediction, target = _prediction_and_target(unet, scheduler, clean, noise, timesteps)
    per_element = F.huber_loss(prediction, target, delta=huber_delta, reduction="none")
    return per_element.flatten(1).mean(dim=1)
