"""Stage 1: the spatiotemporal VQ-VAE and its GroupNorm patch discriminator.

Shape of a step: the loader yields (B, k, 1, H, W, T), one item per SUBJECT (the DP privacy
unit); :func:`~fedcmr4d.stages.base.flatten` makes it (B * k, 1, H, W, T); the generator loss is
L1 + codebook + commitment + entropy (+ perceptual) (+ adversarial once
``autoencoder.adversarial_start_step`` is reached, :meth:`AutoencoderConfig.adversarial_active`);
then the discriminator takes its own step.

Under DP (:meth:`AutoencoderStage.dp_step`) the same losses run per subject:

* each DP optimizer step draws its OWN Poisson sample of subjects (one for the generator, one
  for the discriminator), so every step is one subsampled Gaussian mechanism and the
  accountant's composition is exact. Reusing one sample for both would be a single release of
  sensitivity sqrt(2)·C, which counting two independent steps would under-account;
* the loss is evaluated per subject (its k slices as a batch of k) under ``torch.func.vmap``
  (:meth:`~fedcmr4d.privacy.engine.SubjectDP.backward`); Opacus's ``DPOptimizer`` clips each
  subject's gradient, adds noise and averages over the expected batch size;
* the discriminator's fakes are the generator's reconstructions of the discriminator's own
  sampled subjects, computed without gradient (the generator's weights are a DP release);
* the Poisson batch size is not put in the metrics (it depends on who was sampled; the
  accountant assumes only the noised sum is released): it stays in ``engine.last_batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from fedcmr4d.config import Config
from fedcmr4d.data.datasets import SliceDataset, cine_slices
from fedcmr4d.models.losses import (
    build_perceptual_loss,
    discriminator_loss,
    generator_adversarial_loss,
    reconstruction_loss,
)
from fedcmr4d.models.quantizer import CosineQuantizer
from fedcmr4d.stages import Stage
from fedcmr4d.stages.base import (
    Runtime,
    StepOptimizers,
    collect_means,
    flatten,
    frozen,
    mean_or_none,
    subjects_batch,
)
from fedcmr4d.train.models import build_autoencoder, build_discriminator

if TYPE_CHECKING:
    from fedcmr4d.privacy.engine import SubjectDP


def psnr(reconstruction: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (reconstruction clamped)."""
    mse = float(torch.mean((reconstruction.clamp(0, 1) - target) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


class AutoencoderStage:
    """Stage 1 at one site: VQ-VAE + discriminator on (k, 1, H, W, T) slices per subject.

    Args:
        cfg: resolved config (``autoencoder``, ``train.autoencoder``).
        cines: the training subjects' (X, Y, Z, T) cines.
        runtime: device and precision.
    """

    stage: ClassVar[Stage] = Stage.AUTOENCODER
    uses_ema: ClassVar[bool] = False

    def __init__(self, cfg: Config, cines: list[np.ndarray], runtime: Runtime) -> None:
        self.cfg = cfg
        self.runtime = runtime
        tc = cfg.train.autoencoder
        self.dataset = SliceDataset(
            cines, tc.slices_per_subject, seed=cfg.seed, augment=tc.augment
        )
        self.autoencoder = build_autoencoder(cfg)
        self.discriminator = build_discriminator(cfg)
        self.models: dict[str, nn.Module] = {
            "autoencoder": runtime.place(self.autoencoder),
            "discriminator": runtime.place(self.discriminator),
        }
        ae = cfg.autoencoder
        self.perceptual = build_perceptual_loss(ae.perceptual_weight, ae.perceptual_weights_path)
        if self.perceptual is not None:
            self.perceptual.to(runtime.device)

    def learning_rates(self) -> dict[str, float]:
        tc = self.cfg.train.autoencoder
        return {"autoencoder": tc.lr, "discriminator": tc.lr_discriminator}

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    # ----------------------------------------------------------------- losses
    def generator_losses(self, x: Tensor, adversarial: bool) -> dict[str, Tensor]:
        """Generator losses for (N, 1, H, W, T) slices; "loss" is the weighted total.

        The discriminator, when ``adversarial``, must be a constant here: the caller holds it
        :func:`~fedcmr4d.stages.base.frozen` (outside any ``torch.func`` transform).
        """
        ae_cfg = self.cfg.autoencoder
        out = self.models["autoencoder"](x)
        q = out.quantizer
        losses = {
            "l1": reconstruction_loss(out.reconstruction, x),
            "codebook": q.codebook_loss,
            "commitment": q.commitment_loss,
            "entropy": q.entropy_loss,
        }
        total = losses["l1"] + q.codebook_loss + q.commitment_loss
        total = total + ae_cfg.entropy_weight * q.entropy_loss
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(out.reconstruction, x)
            total = total + ae_cfg.perceptual_weight * losses["perceptual"]
        if adversarial:
            logits = self.models["discriminator"](out.reconstruction)
            losses["adv_g"] = generator_adversarial_loss(logits, ae_cfg.adversarial_loss)
            total = total + ae_cfg.adversarial_weight * losses["adv_g"]
        losses["loss"] = total
        losses["perplexity"] = q.perplexity
        losses["reconstruction"] = out.reconstruction
        return losses

    def discriminator_losses(self, x: Tensor, reconstruction: Tensor) -> Tensor:
        disc = self.models["discriminator"]
        return discriminator_loss(
            disc(x), disc(reconstruction.detach()), self.cfg.autoencoder.adversarial_loss
        )

    # ----------------------------------------------------------------- steps
    def train_step(
        self, step: int, next_batch: Callable[[], Tensor], optim: StepOptimizers, accumulation: int
    ) -> dict[str, float]:
        adversarial = self.cfg.autoencoder.adversarial_active(step)
        rt = self.runtime
        metrics: dict[str, float] = {}
        for _ in range(accumulation):
            x = rt.to_device(flatten(next_batch()))
            with frozen(self.models["discriminator"]), rt.autocast():
                losses = self.generator_losses(x, adversarial)
            (losses["loss"] / accumulation).backward()
            if adversarial:
                with rt.autocast():
                    d_loss = self.discriminator_losses(x, losses["reconstruction"])
                (d_loss / accumulation).backward()
                losses["adv_d"] = d_loss
            for key, value in losses.items():
                if key != "reconstruction":
                    metrics[key] = metrics.get(key, 0.0) + float(value.detach()) / accumulation
        optim.step("autoencoder")
        if adversarial:
            optim.step("discriminator")
        return metrics

    def dp_step(self, step: int, engine: SubjectDP, optim: StepOptimizers) -> dict[str, float]:
        """One DP generator step and, once the adversarial loss is on, one DP discriminator step."""
        rt = self.runtime
        generator = self.models["autoencoder"]
        discriminator = self.models["discriminator"]
        adversarial = self.cfg.autoencoder.adversarial_active(step)
        self.set_epoch(step)  # fresh slice draws each step
        metrics: dict[str, float] = {}

        def generator_loss(x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            with rt.autocast():
                losses = self.generator_losses(x, adversarial)
            parts = {k: v for k, v in losses.items() if k not in ("loss", "reconstruction")}
            return losses["loss"], parts

        x = subjects_batch(self.dataset, engine.draw(), rt)
        with frozen(discriminator):
            losses, parts = engine.backward(generator, generator_loss, x)
        optim.step("autoencoder")
        collect_means(metrics, parts)
        if (mean := mean_or_none(losses)) is not None:
            metrics["loss"] = mean
        if adversarial:
            x = subjects_batch(self.dataset, engine.draw(), rt)
            with torch.no_grad(), rt.autocast():
                fakes = (
                    generator(flatten(x)).reconstruction.reshape(x.shape)
                    if x.shape[0]
                    else torch.zeros_like(x)
                )

            def d_loss(real: Tensor, fake: Tensor) -> Tensor:
                with rt.autocast():
                    return self.discriminator_losses(real, fake)

            d_losses, _ = engine.backward(discriminator, d_loss, x, fakes.to(x.dtype))
            optim.step("discriminator")
            if (mean := mean_or_none(d_losses)) is not None:
                metrics["adv_d"] = mean
        return metrics

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, cines: list[np.ndarray]) -> dict[str, float]:
        """PSNR (dB), L1, code perplexity, dead codes (cosine codebook only), distinct codes per
        slice and the cosine of a latent position's code in consecutive frames (near 1: smooth
        latents stage 2 can learn; near 0.5: scrambled, docs/models.md)."""
        model = self.models["autoencoder"]
        rt = self.runtime
        psnrs, l1s, indices, per_slice, frame_cos = [], [], [], [], []
        for cine in cines:
            x = rt.to_device(cine_slices(cine))
            with rt.autocast():
                out = model(x)
            recon = out.reconstruction.float()
            psnrs.append(psnr(recon, x))
            l1s.append(float(torch.mean(torch.abs(recon.clamp(0, 1) - x))))
            indices.append(out.quantizer.indices.reshape(-1).cpu())
            per_slice += [len(torch.unique(i)) for i in out.quantizer.indices]
            codes = out.quantizer.quantized.float()  # (Z, D, h, w, t)
            cos = torch.nn.functional.cosine_similarity(codes[..., 1:], codes[..., :-1], dim=1)
            frame_cos.append(float(cos.mean()))
        all_indices = torch.cat(indices)
        quantizer = self.autoencoder.quantizer
        used = int(torch.unique(all_indices).numel())
        metrics = {
            "psnr": float(np.mean(psnrs)),
            "l1": float(np.mean(l1s)),
            "perplexity": float(quantizer.perplexity(all_indices)),
            "codes_used": float(used),
            "codes_per_slice": float(np.mean(per_slice)),
            "latent_frame_cosine": float(np.mean(frame_cos)),
            "num-examples": float(len(cines)),
        }
        if isinstance(quantizer, CosineQuantizer):  # FSQ's grid has no codes to die
            metrics["dead_codes"] = float(quantizer.num_embeddings - used)
        return metrics

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}
