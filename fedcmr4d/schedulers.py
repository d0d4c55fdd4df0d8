"""Noise schedules of stage 2: training (DDPM) and sampling (DDIM eta = 0, or DDPM).

MONAI's schedulers own the schedule (``set_timesteps``, ``step``, ``add_noise``); this module
builds them from the ``diffusion`` config (cosine schedule, v-prediction by default; FIELD-NOTES
explains why epsilon with a scaled-linear schedule diverged on CPU budgets) and says what the
denoiser is trained to predict.
"""

from __future__ import annotations

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from fedcmr4d.config import DiffusionConfig


def build_train_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The forward-noising schedule used for training (and for DDPM sampling)."""
    return DDPMScheduler(
        num_train_timesteps=cfg.timesteps,
        schedule=cfg.schedule,
        prediction_type=cfg.prediction,
        clip_sample=False,
    )


def build_sample_scheduler(
    cfg: DiffusionConfig, *, clip: float | None = None
) -> DDIMScheduler | DDPMScheduler:
    """DDIM (eta = 0) or DDPM, with ``cfg.sample_steps`` steps.

    Args:
        cfg: diffusion settings.
        clip: if given, predicted clean latents are clipped to [-clip, clip]; scaled unit codes
            have every entry within +-latent_scale, so that is the natural bound.
    """
    common = {
        "num_train_timesteps": cfg.timesteps,
        "schedule": cfg.schedule,
        "prediction_type": cfg.prediction,
        "clip_sample": clip is not None,
        "clip_sample_min": -(clip or 1.0),
        "clip_sample_max": clip or 1.0,
    }
    scheduler: DDIMScheduler | DDPMScheduler
    if cfg.sampler == "ddim":
        scheduler = DDIMScheduler(**common)  # type: ignore[arg-type]
    else:
        scheduler = DDPMScheduler(**common)  # type: ignore[arg-type]
    scheduler.set_timesteps(min(cfg.sample_steps, cfg.timesteps))
    return scheduler


def diffusion_target(
    scheduler: DDPMScheduler, clean: Tensor, noise: Tensor, timesteps: Tensor
) -> Tensor:
    """What the UNet is trained to predict: v, epsilon or the clean sample."""
    kind = scheduler.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "epsilon":
        return noise
    return clean


def min_snr_weights(scheduler: DDPMScheduler, timesteps: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weight of each sample's timestep, (N,) -> (N,).

    Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy" (ICCV 2023):
    clipping the signal-to-noise ratio at ``gamma`` stops the nearly clean timesteps, whose
    targets are easy, from dominating the gradient. Expressed for the target the UNet predicts:
    min(SNR, gamma) / (SNR + 1) for v, / SNR for epsilon, unchanged for the clean sample.
    """
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1.0 - alpha_bar).clamp_min(1e-12)
    clipped = snr.clamp(max=gamma)
    kind = scheduler.prediction_type
    if kind == "v_prediction":
        return clipped / (snr + 1.0)
    if kind == "epsilon":
        return clipped / snr.clamp_min(1e-12)
    return clipped
