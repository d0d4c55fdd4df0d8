"""Stage 2: the latent denoiser on the frozen stage-1 VQ-VAE's latent stacks.

Shape of a step: each training subject is encoded once by the frozen autoencoder into (Z, D, h,
w, t) quantized latents, scaled by ``latent_scale`` (1 / std of the codebook's entries); the
loader yields (B, k, S * D, h, w, t) windows of S consecutive slices; the loss is the Huber
diffusion loss (:func:`~fedcmr4d.models.losses.diffusion_loss`). Under DP
(:meth:`DiffusionStage.dp_step`) each step draws a Poisson sample of subjects and the loss is
taken per subject under ``torch.func.vmap`` (randomness differs per subject); the loop keeps the
EMA of weights (post-processing of the DP release).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from fedcmr4d.config import Config
from fedcmr4d.data.datasets import LatentStackDataset, cine_slices
from fedcmr4d.models.losses import diffusion_loss
from fedcmr4d.models.vqvae import SpatioTemporalVQVAE
from fedcmr4d.schedulers import build_train_scheduler
from fedcmr4d.stages import Stage
from fedcmr4d.stages.base import Runtime, StepOptimizers, flatten, mean_or_none, subjects_batch
from fedcmr4d.train.models import build_autoencoder, build_denoiser, stack_slices_of, sub_weights

if TYPE_CHECKING:
    from fedcmr4d.privacy.engine import SubjectDP


def load_frozen_autoencoder(cfg: Config, weights: dict[str, Tensor]) -> SpatioTemporalVQVAE:
    """Stage-1 model from ``autoencoder.*`` weights (strict), in eval mode, no gradients."""
    model = build_autoencoder(cfg)
    own = sub_weights(weights, "autoencoder")
    if not own:
        raise ValueError("autoencoder_weights holds no 'autoencoder.*' entries")
    missing, unexpected = model.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"autoencoder_weights do not match config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.eval().requires_grad_(False)
    return model


@torch.no_grad()
def encode_subject(model: SpatioTemporalVQVAE, cine: np.ndarray, device: torch.device) -> Tensor:
    """(X, Y, Z, T) cine -> (Z, D, h, w, t) quantized, unscaled latents on the CPU."""
    slices = cine_slices(cine).to(device)
    return model.encode_stage_2_inputs(slices).cpu()


class DiffusionStage:
    """Stage 2 at one site: the denoiser on the frozen autoencoder's scaled latent stacks.

    Args:
        cfg: resolved config (``diffusion``, ``train.diffusion``; ``autoencoder`` and ``data``
            must be those stage 1 was trained with).
        cines: the training subjects' (X, Y, Z, T) cines.
        runtime: device and precision.
        autoencoder_weights: the frozen stage-1 weights (``autoencoder.*``).
    """

    stage: ClassVar[Stage] = Stage.DIFFUSION
    uses_ema: ClassVar[bool] = True

    def __init__(
        self,
        cfg: Config,
        cines: list[np.ndarray],
        runtime: Runtime,
        *,
        autoencoder_weights: dict[str, Tensor],
    ) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.frozen_autoencoder = load_frozen_autoencoder(cfg, autoencoder_weights).to(
            runtime.device
        )
        self.latent_scale = self.frozen_autoencoder.quantizer.latent_scale()
        self.stack_slices = stack_slices_of(cfg)
        latents = [self._latents(c) for c in cines]
        k = cfg.train.diffusion.slices_per_subject
        self.dataset = LatentStackDataset(latents, self.stack_slices, k, seed=cfg.seed)
        self.models: dict[str, nn.Module] = {"unet": runtime.place(build_denoiser(cfg))}
        self.noise_scheduler = build_train_scheduler(cfg.diffusion).to(runtime.device)

    def _latents(self, cine: np.ndarray) -> Tensor:
        """(Z, D, h, w, t) scaled latents of one subject."""
        return (
            encode_subject(self.frozen_autoencoder, cine, self.runtime.device) * self.latent_scale
        )

    def learning_rates(self) -> dict[str, float]:
        return {"unet": self.cfg.train.diffusion.lr}

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def loss(self, latent_stacks: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Huber loss for (N, S * D, h, w, t) scaled latent stacks."""
        with self.runtime.autocast():
            return diffusion_loss(
                self.models["unet"],
                self.noise_scheduler,
                latent_stacks,
                huber_delta=self.cfg.diffusion.huber_delta,
                generator=generator,
                min_snr_gamma=self.cfg.diffusion.min_snr_gamma,
            )

    def train_step(
        self, step: int, next_batch: Callable[[], Tensor], optim: StepOptimizers, accumulation: int
    ) -> dict[str, float]:
        total = 0.0
        for _ in range(accumulation):
            x = self.runtime.to_device(flatten(next_batch()))
            loss = self.loss(x)
            (loss / accumulation).backward()
            total += float(loss.detach()) / accumulation
        optim.step("unet")
        return {"loss": total}

    def dp_step(self, step: int, engine: SubjectDP, optim: StepOptimizers) -> dict[str, float]:
        """One DP step of the UNet on a Poisson sample of subjects' latent stacks."""
        self.set_epoch(step)  # fresh window draws each step
        x = subjects_batch(self.dataset, engine.draw(), self.runtime)
        losses, _ = engine.backward(self.models["unet"], self.loss, x)
        optim.step("unet")
        mean = mean_or_none(losses)
        return {} if mean is None else {"loss": mean}

    @torch.no_grad()
    def evaluate(self, cines: list[np.ndarray]) -> dict[str, float]:
        """The diffusion loss at fixed noise/timesteps (seeded) on the subjects' latent stacks."""
        s = self.stack_slices
        stacks = []
        for cine in cines:
            lat = self._latents(cine)
            stacks += [lat[i : i + s].flatten(0, 1) for i in range(0, lat.shape[0] - s + 1, s)]
        generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        losses = []
        for stack in stacks:
            x = self.runtime.to_device(stack.unsqueeze(0))
            losses.append(float(self.loss(x, None if self.runtime.cuda else generator)))
        return {"val_loss": float(np.mean(losses)), "num-examples": float(len(cines))}

    def checkpoint_meta(self) -> dict[str, Any]:
        """The scale applied to the stage-1 latents (the checkpoint writer records the rest)."""
        return {"latent_scale": self.latent_scale}
