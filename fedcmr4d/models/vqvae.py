"""Spatiotemporal VQ-VAE on 2D+t slices: (N, 1, H, W, T) -> (N, D, H/4, W/4, T/s) -> back.

Encoder and decoder are MONAI's VQ-VAE pieces (3D convolutions over x, y and t, residual units,
no normalisation layers, hence no running statistics). The quantizer is one of our own two:
:class:`~fedcmr4d.models.quantizer.CosineQuantizer` (the seed's design: an l2-normalised
codebook changed only by gradient; van den Oord et al., 2017; Yu et al., ICLR 2022) or
:class:`~fedcmr4d.models.fsq.ScalarQuantizer` (finite scalar quantization, no codebook; Mentzer
et al., ICLR 2024; the demo's, docs/models.md says why). Input images are in [0, 1]; the decoder
has no output activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from monai.networks.nets.vqvae import Decoder, Encoder
from torch import Tensor, nn

from fedcmr4d.config import DECODE_MODES
from fedcmr4d.models.fsq import ScalarQuantizer
from fedcmr4d.models.quantizer import CosineQuantizer, QuantizerOutput


@dataclass
class VQVAEOutput:
    """reconstruction (N, C, H, W, T) and the quantizer's output (codes, losses, perplexity)."""

    reconstruction: Tensor
    quantizer: QuantizerOutput


def _down_up_parameters(
    temporal_downsample: int,
) -> tuple[list[tuple], list[tuple]]:
    """MONAI (stride, kernel, dilation, padding[, output_padding]) per level, 4x in x and y."""
    down: list[tuple] = [(2, 4, 1, 1), (2, 4, 1, 1)]
    up: list[tuple] = [(2, 4, 1, 1, 0), (2, 4, 1, 1, 0)]
    if temporal_downsample == 2:
        down[1] = ((2, 2, 1), (4, 4, 3), 1, 1)
        up[0] = ((2, 2, 1), (4, 4, 3), 1, 1, 0)
    return down, up


class SpatioTemporalVQVAE(nn.Module):
    """VQ-VAE whose latents feed the stage-2 diffusion model.

    No defaults for what the config sets: :mod:`fedcmr4d.train.models` passes them from it.

    Args:
        in_channels: image channels (1 for cine MRI).
        channels: two encoder widths (first and second level).
        num_res_layers: residual units per level.
        num_res_channels: residual widths per level (same length as ``channels``).
        num_embeddings: codebook size.
        embedding_dim: latent dimension D.
        commitment_cost: weight of the commitment loss.
        entropy_usage: "batch" or "sample" (:class:`CosineQuantizer`'s ``usage``).
        temporal_downsample: 4 (the seed's design) or 2 (keeps more of the beat at 16 frames).
        quantizer: "cosine" (codebook of ``num_embeddings`` unit codes) or "fsq" (``fsq_levels``
            values per dimension; ``num_embeddings``, ``commitment_cost`` and
            ``entropy_usage`` then play no part).
        fsq_levels: FSQ levels per latent dimension (length ``embedding_dim``).

    Shapes:
        ``forward``: (N, in_channels, H, W, T) -> reconstruction of the same shape; H, W
        divisible by 4, T by ``temporal_downsample``.
        ``encode_stage_2_inputs``: -> (N, D, H/4, W/4, T/temporal_downsample) unit codes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        channels: Sequence[int],
        num_res_layers: int,
        num_res_channels: Sequence[int],
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float,
        temporal_downsample: int,
        entropy_usage: Literal["batch", "sample"],
        quantizer: Literal["cosine", "fsq"] = "cosine",
        fsq_levels: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if len(channels) != 2:
            raise ValueError(f"channels must have 2 entries (4x down), got {list(channels)}")
        if len(num_res_channels) != len(channels):
            raise ValueError(
                f"num_res_channels must have {len(channels)} entries, got {list(num_res_channels)}"
            )
        if num_res_layers < 0:
            raise ValueError(f"num_res_layers must be >= 0, got {num_res_layers}")
        if temporal_downsample not in (2, 4):
            raise ValueError(f"temporal_downsample must be 2 or 4, got {temporal_downsample}")
        self.in_channels = in_channels
        self.embedding_dim = embedding_dim
        self.temporal_downsample = temporal_downsample
        down, up = _down_up_parameters(temporal_downsample)
        self.encoder = Encoder(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=embedding_dim,
            channels=tuple(channels),
            num_res_layers=num_res_layers,
            num_res_channels=tuple(num_res_channels),
            downsample_parameters=down,
            dropout=0.0,
            act="RELU",
        )
        self.quantizer: CosineQuantizer | ScalarQuantizer
        if quantizer == "fsq":
            if len(fsq_levels) != embedding_dim:
                raise ValueError(
                    f"fsq_levels needs one entry per latent dimension ({embedding_dim}), "
                    f"got {list(fsq_levels)}"
                )
            self.quantizer = ScalarQuantizer(fsq_levels)
        elif quantizer == "cosine":
            self.quantizer = CosineQuantizer(
                num_embeddings=num_embeddings,
                embedding_dim=embedding_dim,
                commitment_cost=commitment_cost,
                usage=entropy_usage,
            )
        else:
            raise ValueError(f"quantizer must be 'cosine' or 'fsq', got {quantizer!r}")
        self.decoder = Decoder(
            spatial_dims=3,
            in_channels=embedding_dim,
            out_channels=in_channels,
            channels=tuple(channels),
            num_res_layers=num_res_layers,
            num_res_channels=tuple(num_res_channels),
            upsample_parameters=up,
            dropout=0.0,
            act="RELU",
            output_act=None,
        )

    @property
    def quantizer_kind(self) -> Literal["cosine", "fsq"]:
        """The config's name of the quantizer this model holds."""
        return "fsq" if isinstance(self.quantizer, ScalarQuantizer) else "cosine"

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W, T), got {tuple(x.shape)}")
        h, w, t = x.shape[2:]
        if h % 4 or w % 4 or t % self.temporal_downsample:
            raise ValueError(
                f"x spatial size {tuple(x.shape[2:])} must be divisible by (4, 4, "
                f"{self.temporal_downsample})"
            )

    def encode(self, x: Tensor) -> Tensor:
        """Continuous encoder output (N, D, h, w, t) before quantization."""
        self._check_input(x)
        return self.encoder(x)

    def decode(self, quantized: Tensor) -> Tensor:
        """(N, D, h, w, t) codes -> (N, C, H, W, T) image."""
        return self.decoder(quantized)

    def forward(self, x: Tensor) -> VQVAEOutput:
        quant = self.quantizer(self.encode(x))
        return VQVAEOutput(self.decode(quant.quantized), quant)

    @torch.no_grad()
    def encode_stage_2_inputs(self, x: Tensor) -> Tensor:
        """(N, C, H, W, T) images -> (N, D, h, w, t) codes (the diffusion space): unit-norm
        codes (cosine) or grid values in [-1, 1] (fsq)."""
        return self.quantizer.snap(self.encode(x))

    @torch.no_grad()
    def decode_stage_2_outputs(
        self, z: Tensor, mode: Literal["unit_sphere", "nearest_code", "clamp"]
    ) -> Tensor:
        """(N, D, h, w, t) sampled latents (unscaled) -> (N, C, H, W, T) images.

        ``nearest_code`` puts every latent vector on a code first (a strict VQ decode: the
        nearest unit code, or the nearest FSQ grid value); ``unit_sphere`` (cosine) only
        l2-normalises it and ``clamp`` (fsq) only clamps it to [-1, 1], so a vector the
        diffusion model places between two codes decodes between them (docs/models.md:
        snapping to the cosine codebook erodes the small end-systolic LV pool).
        """
        allowed = DECODE_MODES[self.quantizer_kind]
        if mode not in allowed:
            raise ValueError(
                f"decode mode {mode!r} does not apply to the {self.quantizer_kind} quantizer "
                f"(one of {allowed})"
            )
        if isinstance(self.quantizer, ScalarQuantizer):
            if mode == "nearest_code":
                return self.decode(self.quantizer.round_latents(z))
            return self.decode(z.clamp(-1.0, 1.0))
        if mode == "nearest_code":
            return self.decode(self.quantizer.snap(z))
        return self.decode(torch.nn.functional.normalize(z, dim=1))

    def latent_shape(self, image_size: int, frames: int) -> tuple[int, int, int, int]:
        """(D, h, w, t) of the latents of an (image_size, image_size, frames) slice."""
        return (
            self.embedding_dim,
            image_size // 4,
            image_size // 4,
            frames // self.temporal_downsample,
        )
