"""Vector quantizer with an l2-normalised codebook trained by gradient (no EMA, no buffers).

MONAI's ``VectorQuantizer`` updates its codebook inside ``forward`` with an exponential moving
average of the batch (a buffer written from data). Under DP-SGD every weight that depends on site
data must come from a clipped, noised gradient step, so this quantizer keeps its codebook as an
``nn.Parameter`` that only the optimizer changes (cf. "improved VQGAN", Yu et al., ICLR 2022:
l2-normalised codes matched by cosine similarity).

Losses (all scalars, means over the batch, so they decompose per sample as DP-SGD needs):

- codebook loss ``||sg[z] - q||^2`` pulls codes to encodings;
- commitment loss ``||z - sg[q]||^2`` (weighted by ``commitment_cost``) keeps encodings near codes;
- entropy loss: mean per-position entropy of the soft assignment (confident matches) minus the
  entropy of the average assignment (many codes in use). ``usage="sample"`` (default) averages
  within each sample, which asks every single slice to use all K codes; ``usage="batch"`` over
  the whole batch (the usual form). docs/models.md: on cpu-small both scramble flat background
  from frame to frame, so stage 2 there trains on latents of ``entropy_weight`` 0.
  Under DP-SGD the trainer computes each subject's loss in its own call (``torch.func.vmap``),
  so there "batch" is that subject's slices and no subject's loss depends on another's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """Result of one quantization.

    Attributes:
        quantized: (N, D, *spatial) straight-through codes (forward: codes, backward: identity).
        indices: (N, *spatial) int64 code index per position.
        codebook_loss: scalar.
        commitment_loss: scalar, already multiplied by ``commitment_cost``.
        entropy_loss: scalar (may be negative; minimised).
        perplexity: scalar, exp of the entropy of code usage in this batch (no gradient).
    """

    quantized: Tensor
    indices: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    entropy_loss: Tensor
    perplexity: Tensor


def _entropy(probs: Tensor, dim: int) -> Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-10))).sum(dim=dim)


@torch.no_grad()
def code_perplexity(indices: Tensor, num_codes: int) -> Tensor:
    """exp(entropy of the histogram of ``indices`` (any shape) over ``num_codes`` codes).

    ``bincount`` with a fixed length, so that DP-SGD's ``vmap`` can fall back to a loop over it
    (``unique`` has a data-dependent shape). Both quantizers report their usage with it.
    """
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes).float()
    return torch.exp(_entropy(counts / counts.sum().clamp_min(1), dim=0))


class CosineQuantizer(nn.Module):
    """Nearest-code quantizer on the unit sphere.

    No defaults for what the config sets: the VQ-VAE passes them from :mod:`fedcmr4d.train.models`.

    Args:
        num_embeddings: codebook size K (>= 2).
        embedding_dim: code dimension D (>= 1); the channel axis of the input.
        commitment_cost: weight of the commitment loss (>= 0).
        entropy_temperature: softmax temperature of the soft assignment used by the entropy loss.
        usage: where the entropy loss's code usage is averaged: "batch" or "sample".

    Shapes:
        input (N, D, *spatial) -> quantized (N, D, *spatial), unit-norm along D.
    """

    def __init__(
        self,
        *,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float,
        usage: Literal["batch", "sample"],
        entropy_temperature: float = 0.01,
    ) -> None:
        super().__init__()
        if num_embeddings < 2:
            raise ValueError(f"num_embeddings must be >= 2, got {num_embeddings}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if commitment_cost < 0:
            raise ValueError(f"commitment_cost must be >= 0, got {commitment_cost}")
        if entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature must be > 0, got {entropy_temperature}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        if usage not in ("batch", "sample"):
            raise ValueError(f"usage must be 'batch' or 'sample', got {usage!r}")
        self.entropy_temperature = entropy_temperature
        self.usage = usage
        self.codebook = nn.Parameter(torch.randn(num_embeddings, embedding_dim))

    def normalized_codebook(self) -> Tensor:
        """(K, D) unit-norm codes."""
        return F.normalize(self.codebook, dim=1)

    def _flatten(self, z: Tensor) -> Tensor:
        if z.ndim < 3 or z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"input must be (N, {self.embedding_dim}, *spatial), got {tuple(z.shape)}"
            )
        return z.movedim(1, -1).reshape(z.shape[0], -1, self.embedding_dim)

    def similarity(self, z: Tensor) -> Tensor:
        """Cosine similarity (N, P, K) of every position's vector with every code."""
        flat = F.normalize(self._flatten(z), dim=-1)
        return flat @ self.normalized_codebook().t()

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize encoder outputs ``z`` (N, D, *spatial)."""
        spatial = z.shape[2:]
        z_unit = F.normalize(z, dim=1)
        sim = self.similarity(z)  # (N, P, K)
        indices = sim.argmax(dim=-1)  # (N, P)
        codes = self.normalized_codebook()[indices]  # (N, P, D)
        quant = codes.reshape(z.shape[0], *spatial, self.embedding_dim).movedim(-1, 1)
        codebook_loss = F.mse_loss(quant, z_unit.detach())
        commitment_loss = self.commitment_cost * F.mse_loss(z_unit, quant.detach())
        probs = torch.softmax(sim / self.entropy_temperature, dim=-1)  # (N, P, K)
        per_position = _entropy(probs, dim=-1).mean()
        if self.usage == "batch":
            usage = _entropy(probs.mean(dim=(0, 1)), dim=-1)
        else:
            usage = _entropy(probs.mean(dim=1), dim=-1).mean()
        entropy_loss = per_position - usage
        straight_through = z_unit + (quant - z_unit).detach()
        return QuantizerOutput(
            quantized=straight_through,
            indices=indices.reshape(z.shape[0], *spatial),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            entropy_loss=entropy_loss,
            perplexity=self.perplexity(indices),
        )

    @torch.no_grad()
    def perplexity(self, indices: Tensor) -> Tensor:
        """exp(entropy of the code histogram) of ``indices`` (any shape); K means all used."""
        return code_perplexity(indices, self.num_embeddings)

    @torch.no_grad()
    def snap(self, z: Tensor) -> Tensor:
        """Replace every vector of ``z`` (N, D, *spatial) by its nearest unit code (cosine)."""
        indices = self.similarity(z).argmax(dim=-1)
        return self.lookup(indices.reshape(z.shape[0], *z.shape[2:]))

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` (N, *spatial) -> (N, D, *spatial)."""
        return self.normalized_codebook()[indices].movedim(-1, 1)

    @torch.no_grad()
    def latent_scale(self) -> float:
        """1 / std of the unit codes' entries: a scale that gives stage-2 latents unit variance.

        Computed from the codebook only (a function of DP-protected weights, so post-processing),
        never from encoded site data. For K random unit codes in D dimensions it is ~sqrt(D).
        """
        return latent_scale_of_codebook(self.codebook)


@torch.no_grad()
def latent_scale_of_codebook(codebook: Tensor) -> float:
    """:meth:`CosineQuantizer.latent_scale` of a (K, D) codebook tensor (no model needed)."""
    std = float(F.normalize(codebook.float(), dim=1).std())
    return 1.0 / std if std > 0 else math.sqrt(codebook.shape[1])
