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
