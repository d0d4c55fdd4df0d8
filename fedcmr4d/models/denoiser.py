"""The stage-2 denoiser and the slice-stacking of latents it works on.

A whole subject is one (S * D, h, w, t) tensor (S = 6 slices, D = 8 code dims -> 48 channels),
denoised in one pass by MONAI's ``DiffusionModelUNet`` (Ho et al., DDPM, 2020; Rombach et al.,
LDM, 2022), so neighbouring slices are generated jointly rather than one at a time. Built from
plain arguments: the config is read by :mod:`fedcmr4d.train.models`.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DiffusionModelUNet
from torch import Tensor


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


def build_unet(
    *,
    in_channels: int,
    channels: Sequence[int],
    attention_levels: Sequence[bool],
    num_res_blocks: int,
    norm_num_groups: int,
    num_head_channels: int,
) -> DiffusionModelUNet:
    """The denoiser: (N, in_channels, h, w, t) + timesteps (N,) -> same shape.

    GroupNorm only (no running statistics). No defaults: :mod:`fedcmr4d.train.models` passes
    the ``diffusion`` config's values. Raises ``ValueError`` naming the argument when a
    width is not divisible by ``norm_num_groups``.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    bad = [c for c in channels if c % norm_num_groups]
    if bad:
        raise ValueError(
            f"channels {tuple(channels)} must be divisible by norm_num_groups={norm_num_groups}"
        )
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=in_channels,
        num_res_blocks=num_res_blocks,
        channels=tuple(channels),
        attention_levels=tuple(attention_levels),
        norm_num_groups=norm_num_groups,
        num_head_channels=num_head_channels,
    )
