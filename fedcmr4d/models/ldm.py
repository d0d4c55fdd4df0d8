"""Latent diffusion on 3D+t latent stacks: S slices' D-dim latents stacked on channels.

A whole subject is one (S * D, h, w, t) tensor (S = 6, D = 8 -> 48 channels), denoised in one
pass by MONAI's ``DiffusionModelUNet`` (Ho et al., DDPM, 2020; Rombach et al., LDM, 2022), so
neighbouring slices are generated jointly rather than one at a time. Training uses MONAI's DDPM
scheduler (cosine schedule, v-prediction by default; FIELD-NOTES explains why epsilon with a
scaled-linear schedule diverged on CPU budgets) and a Huber loss; sampling uses DDIM (eta = 0)
or DDPM with an explicit ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from fedcmr4d.config import DiffusionConfig


def stack_slices(latents: Tensor) -> Tensor:
    """(N, S, D, h, w, t) per-slice latents -> (N, S * D, h, w, t), slice-major channels."""
    if latents.ndim != 6:
        raise ValueError(f"latents must be (N, S, D, h, w, t), got {tuple(latents.shape)}")
    n, s, d = latents.shape[:3]
    return latents.reshape(n, s * d, *latents.shape[3:])


def unstack_slices(latent_stack: Tensor, embedding_dim: int) -> Tensor:
    """(N, S * D, h, w, t) -> (N, S, D, h, w, t); inverse of :func:`stack_slices`."""
    if latent_stack.ndim != 5 or latent_stack.shape[1] % embedding_dim:
        raise ValueError(
            f"latent_stack must be (N, S*{embedding_dim}, h, w, t), got {tuple(latent_stack.shape)}"
        )
    n, c = latent_stack.shape[:2]
    return latent_stack.reshape(n, c // embedding_dim, embedding_dim, *latent_stack.shape[2:])


def build_unet(cfg: DiffusionConfig, in_channels: int) -> DiffusionModelUNet:
    """The denoiser: (N, in_channels, h, w, t) + timesteps (N,) -> same shape.

    GroupNorm only (no running statistics). Raises ``ValueError`` naming the argument when the
    config's widths are not divisible by ``norm_num_groups``.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    bad = [c for c in cfg.channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(
            f"diffusion.channels {cfg.channels} must be divisible by "
            f"diffusion.norm_num_groups={cfg.norm_num_groups}"
        )
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=in_channels,
        num_res_blocks=cfg.num_res_blocks,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels),
        norm_num_groups=cfg.norm_num_groups,
        num_head_channels=cfg.num_head_channels,
    )


def min_latent_size(cfg: DiffusionConfig) -> int:
    """The UNet halves each axis once per level after the first."""
    return 2 ** (len(cfg.channels) - 1)


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


def diffusion_loss(
    unet: Callable[..., Tensor],
    scheduler: DDPMScheduler,
    clean: Tensor,
    *,
    huber_delta: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Huber loss of the UNet's prediction at uniformly random timesteps.

    Args:
        unet: denoiser ``unet(x=noisy, timesteps=t)``.
        scheduler: training schedule.
        clean: (N, C, h, w, t) scaled latent stacks.
        huber_delta: Huber transition point (smooth L1 on v for delta = 1).
        generator: optional generator for reproducible noise and timesteps (validation).
    """
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    timesteps = torch.randint(
        0,
        scheduler.num_train_timesteps,
        (clean.shape[0],),
        generator=generator,
        device=clean.device,
    )
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction = unet(x=noisy, timesteps=timesteps)
    target = diffusion_target(scheduler, clean, noise, timesteps)
    return F.huber_loss(prediction.float(), target.float(), delta=huber_delta)


@torch.no_grad()
def denoise(
    unet: Callable[..., Tensor],
    scheduler: DDIMScheduler | DDPMScheduler,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Run the reverse process from Gaussian noise of ``shape`` (N, C, h, w, t) to latents.

    The noise is drawn on the CPU from ``generator`` so that a seed gives the same samples on
    every device. ``on_step(i)`` is called after each timestep (progress bars).
    """
    sample = torch.randn(shape, generator=generator).to(device)
    for i, t in enumerate(scheduler.timesteps):
        timesteps = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        model_output = unet(x=sample, timesteps=timesteps)
        if isinstance(scheduler, DDIMScheduler):
            sample, _ = scheduler.step(model_output, int(t), sample, eta=0.0)
        else:
            sample, _ = _ddpm_step(scheduler, model_output, int(t), sample, generator)
        if on_step is not None:
            on_step(i)
    return sample


def _ddpm_step(
    scheduler: DDPMScheduler,
    model_output: Tensor,
    t: int,
    sample: Tensor,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """One DDPM step with the variance noise drawn on the CPU (device-independent seeds)."""
    if sample.device.type == "cpu":
        return scheduler.step(model_output, t, sample, generator=generator)
    cpu_prev, cpu_x0 = scheduler.step(model_output.cpu(), t, sample.cpu(), generator=generator)
    return cpu_prev.to(sample.device), cpu_x0.to(sample.device)
