"""Build each stage's networks from a :class:`~fedcmr4d.config.Config` (one place)."""

from __future__ import annotations

from torch import Tensor, nn

from fedcmr4d.config import Config
from fedcmr4d.models.denoiser import build_unet
from fedcmr4d.models.discriminator import GroupNormPatchDiscriminator
from fedcmr4d.models.vqvae import SpatioTemporalVQVAE


def build_autoencoder(cfg: Config) -> SpatioTemporalVQVAE:
    """The stage-1 VQ-VAE for ``cfg.autoencoder``."""
    ae = cfg.autoencoder
    return SpatioTemporalVQVAE(
        1,
        channels=ae.channels,
        num_res_layers=ae.num_res_layers,
        num_res_channels=ae.num_res_channels,
        num_embeddings=ae.num_embeddings,
        embedding_dim=ae.embedding_dim,
        commitment_cost=ae.commitment_cost,
        temporal_downsample=ae.temporal_downsample,
        entropy_usage=ae.entropy_usage,
        quantizer=ae.quantizer,
        fsq_levels=ae.fsq_levels,
    )


def build_discriminator(cfg: Config) -> GroupNormPatchDiscriminator:
    ae = cfg.autoencoder
    return GroupNormPatchDiscriminator(
        1, channels=ae.discriminator_channels, num_layers=ae.discriminator_layers
    )


def stack_slices_of(cfg: Config) -> int:
    """Slices per stage-2 latent stack (``diffusion.stack_slices``, default ``data.slices``)."""
    return cfg.diffusion.stack_slices or cfg.data.slices


def stage2_channels(cfg: Config) -> int:
    """UNet channels: stacked slices x latent dim (6 x 8 = 48 for the seed)."""
    return stack_slices_of(cfg) * cfg.autoencoder.embedding_dim


def build_denoiser(cfg: Config) -> nn.Module:
    d = cfg.diffusion
    return build_unet(
        in_channels=stage2_channels(cfg),
        channels=d.channels,
        attention_levels=d.attention_levels,
        num_res_blocks=d.num_res_blocks,
        norm_num_groups=d.norm_num_groups,
        num_head_channels=d.num_head_channels,
    )


def strip_prefixes(name: str) -> str:
    """Drop wrapper prefixes (Opacus ``_module.``, ``torch.compile``'s ``_orig_mod.``)."""
    for prefix in ("_module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


def sub_weights(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``{"<prefix>.a": t}`` -> ``{"a": t}`` for the entries under ``prefix``."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in weights.items() if k.startswith(head)}
