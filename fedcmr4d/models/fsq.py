"""Finite scalar quantization (FSQ): every latent dimension rounded to a few fixed levels.

Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple" (ICLR 2024). Each of the D
latent dimensions is bounded by ``tanh`` and rounded to one of ``levels[d]`` evenly spaced
values in [-1, 1]; the code of a position is the tuple of its D values, so the implicit codebook
has prod(levels) entries (5^8 = 390 625 for the demo) and every one of them is reachable.

Why it is here (docs/models.md, "Stage 1 on 32 x 32 phantoms"): the l2-normalised codebook
(:class:`~fedcmr4d.models.quantizer.CosineQuantizer`) without its usage loss settles on ~30-50
codes, too few for a 4 x 4 x 2 patch to say where an edge lies, and with the usage loss it
scrambles flat background (docs/models.md, "Code usage versus smooth latents"). FSQ has neither
failure: no codebook to collapse, nothing that rewards spreading, and neighbouring positions of
flat background round to the same values.

It has no parameters and no buffers, so under DP-SGD nothing in it depends on site data; its
auxiliary losses are zero (the fields exist so both quantizers return the same
:class:`~fedcmr4d.models.quantizer.QuantizerOutput`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedcmr4d.config import check_fsq_levels
from fedcmr4d.models.quantizer import QuantizerOutput, code_perplexity


class ScalarQuantizer(nn.Module):
    """FSQ over the channel axis: (N, D, *spatial) -> values on a fixed grid in [-1, 1]^D.

    Args:
        levels: values per dimension (odd, >= 3); its length is the latent dimension D.

    Shapes:
        input (N, D, *spatial) -> quantized (N, D, *spatial) (straight-through), indices
        (N, *spatial) int64 in [0, prod(levels)).
    """

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        self.levels = check_fsq_levels(levels)
        self.embedding_dim = len(self.levels)
        self.num_embeddings = math.prod(self.levels)
        self._half_values = [(v - 1) / 2 for v in self.levels]
        self._radix_values = [math.prod(self.levels[:i]) for i in range(len(self.levels))]

    # The grid's constants are built in each call, not held as buffers: the DP guard
    # (fedcmr4d.privacy.guards) refuses buffers, and the weights then hold only the encoder and
    # decoder.
    def _half(self, like: Tensor) -> Tensor:
        """(D,) half the level count minus one, per dimension, on ``like``'s device and dtype."""
        return torch.tensor(self._half_values, dtype=like.dtype, device=like.device)

    def _channels_last(self, z: Tensor) -> Tensor:
        if z.ndim < 3 or z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"input must be (N, {self.embedding_dim}, *spatial), got {tuple(z.shape)}"
            )
        return z.movedim(1, -1)

    def _round(self, grid_units: Tensor) -> Tensor:
        """Values in level units (..., D) -> the nearest grid value in [-1, 1] (..., D)."""
        half = self._half(grid_units)
        return torch.round(grid_units).clamp(-half, half) / half

    def _indices(self, values: Tensor) -> Tensor:
        """Grid values (..., D) in [-1, 1] -> mixed-radix code index (...)."""
        half = self._half(values)
        digits = torch.round(values * half + half).long()
        radix = torch.tensor(self._radix_values, dtype=torch.long, device=values.device)
        return (digits * radix).sum(dim=-1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize encoder outputs ``z`` (N, D, *spatial)."""
        last = self._channels_last(z)
        bounded = torch.tanh(last) * self._half(last)
        values = self._round(bounded)
        continuous = bounded / self._half(last)
        straight = continuous + (values - continuous).detach()
        zero = z.new_zeros(())
        indices = self._indices(values.detach())
        return QuantizerOutput(
            quantized=straight.movedim(-1, 1),
            indices=indices,
            codebook_loss=zero,
            commitment_loss=zero,
            entropy_loss=zero,
            perplexity=self.perplexity(indices),
        )

    @torch.no_grad()
    def perplexity(self, indices: Tensor) -> Tensor:
        """exp(entropy of the code histogram) of ``indices`` (any shape)."""
        return code_perplexity(indices, self.num_embeddings)

    @torch.no_grad()
    def snap(self, z: Tensor) -> Tensor:
        """Encoder outputs (N, D, *spatial) -> their grid values (the decoder trains on these)."""
        last = self._channels_last(z)
        return self._round(torch.tanh(last) * self._half(last)).movedim(-1, 1)

    @torch.no_grad()
    def round_latents(self, z: Tensor) -> Tensor:
        """Sampled latents already in [-1, 1] units (N, D, *spatial) -> nearest grid values."""
        last = self._channels_last(z)
        return self._round(last * self._half(last)).movedim(-1, 1)

    @torch.no_grad()
    def latent_scale(self) -> float:
        """1 / std of the grid values under uniform use of every level (data-independent).

        For L evenly spaced values in [-1, 1] the variance is (L + 1) / (3 (L - 1)); the
        dimensions are pooled. A function of the config only, like the cosine quantizer's
        codebook-only scale, never of encoded site data.
        """
        return fsq_latent_scale(self.levels)


def fsq_latent_scale(levels: Sequence[int]) -> float:
    """:meth:`ScalarQuantizer.latent_scale` from the levels alone (no model needed)."""
    checked = check_fsq_levels(levels)
    variance = sum((v + 1) / (3 * (v - 1)) for v in checked) / len(checked)
    return 1.0 / math.sqrt(variance)
