"""One stage's models, optimizers and data at one site: the code `fedcmr4d train` and the Flower
ClientApp share.

Shape of a step (stage 1): the loader yields (B, k, 1, H, W, T), one item per SUBJECT (the DP
privacy unit); :meth:`StageTrainer.flatten` makes it (B * k, 1, H, W, T); the VQ-VAE loss is
L1 + codebook + commitment + entropy (+ perceptual) (+ adversarial after
``autoencoder.adversarial_start_step``); then the discriminator takes its own step. Stage 2: the
loader yields (B, k, S * D, h, w, t) scaled latent stacks of the frozen stage-1 model; the loss
is the Huber diffusion loss.

Hooks for DP (the privacy helper's ``privacy`` object): models are built in
:meth:`build_models`, optimizers in :meth:`build_optimizers`, the loader in
:meth:`build_dataloader`, each loss in a small method; ``privacy.attach(trainer)`` is called at
the end of ``__init__`` and may replace ``trainer.models[...]``, ``trainer.optimizers[...]`` and
``trainer.loader``. :meth:`get_weights` strips Opacus' ``_module.`` prefixes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fedcmr4d.config import Config, StageTrainConfig
from fedcmr4d.data.datasets import LatentStackDataset, SliceDataset, cine_slices, load_cines
from fedcmr4d.devices import resolve_device
from fedcmr4d.errors import ConfigError
from fedcmr4d.models.losses import (
    build_perceptual_loss,
    diffusion_loss,
    discriminator_loss,
    generator_adversarial_loss,
    reconstruction_loss,
)
from fedcmr4d.models.vqvae import SpatioTemporalVQVAE
from fedcmr4d.schedulers import build_train_scheduler
from fedcmr4d.train.models import (
    build_autoencoder,
    build_denoiser,
    build_discriminator,
    stack_slices_of,
    strip_prefixes,
    sub_weights,
)

log = logging.getLogger(__name__)

StageName = Literal["autoencoder", "diffusion"]


class PrivacyHook(Protocol):
    """What the trainer asks of a privacy object: wrap models/optimizers/loader in place."""

    def attach(self, trainer: StageTrainer) -> None: ...


def psnr(reconstruction: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (reconstruction clamped)."""
    mse = float(torch.mean((reconstruction.clamp(0, 1) - target) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


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


class StageTrainer:
    """One stage's models, optimizers and data at one site (local CLI and Flower ClientApp).

    Args:
        stage: "autoencoder" (stage 1) or "diffusion" (stage 2).
        cfg: resolved config.
        cohort_dir: the site's cohort folder.
        device: "auto", "cpu" or "cuda"; "auto" defers to ``cfg.train.device``.
        subject_ids: training subjects (default: all in the cohort).
        autoencoder_weights: stage 2 only: the frozen stage-1 weights (``autoencoder.*``).
        privacy: the privacy helper's hook; ``privacy.attach(self)`` runs last.
    """

    def __init__(
        self,
        stage: StageName,
        cfg: Config,
        cohort_dir: str | Path,
        *,
        device: str = "auto",
        subject_ids: Sequence[str] | None = None,
        autoencoder_weights: dict[str, Tensor] | None = None,
        privacy: object | None = None,
    ) -> None:
        if stage not in ("autoencoder", "diffusion"):
            raise ValueError(f"stage must be 'autoencoder' or 'diffusion', got {stage!r}")
        if stage == "diffusion" and autoencoder_weights is None:
            raise ValueError("stage 'diffusion' needs autoencoder_weights (the frozen stage 1)")
        self.stage: StageName = stage
        self.cfg = cfg
        self.cohort_dir = Path(cohort_dir)
        self.device = resolve_device(cfg.train.device if device == "auto" else device)
        self.global_step = 0
        self.epoch = 0
        self.subject_ids, cines = load_cines(
            cohort_dir, subject_ids, image_size=cfg.data.image_size, frames=cfg.data.frames
        )
        self.frozen_autoencoder: SpatioTemporalVQVAE | None = None
        self.latent_scale = 1.0
        if stage == "diffusion":
            assert autoencoder_weights is not None
            self.frozen_autoencoder = load_frozen_autoencoder(cfg, autoencoder_weights).to(
                self.device
            )
            self.latent_scale = self.frozen_autoencoder.quantizer.latent_scale()
        self.dataset = self.build_dataset(cines)
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.lr_schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.build_models()
        self.build_optimizers()
        self.loader: DataLoader[Tensor] = self.build_dataloader()
        self._batches: Iterator[Tensor] | None = None
        self.perceptual = (
            build_perceptual_loss(
                cfg.autoencoder.perceptual_weight, cfg.autoencoder.perceptual_weights_path
            )
            if stage == "autoencoder"
            else None
        )
        if self.perceptual is not None:
            self.perceptual.to(self.device)
        self.noise_scheduler = build_train_scheduler(cfg.diffusion).to(self.device)
        self.ema: dict[str, Tensor] | None = None
        self._reset_ema()
        self.privacy = privacy
        if privacy is not None:
            attach = getattr(privacy, "attach", None)
            if attach is None:
                raise TypeError("privacy must have an attach(trainer) method")
            attach(self)

    # ----------------------------------------------------------------- construction
    @property
    def train_cfg(self) -> StageTrainConfig:
        return (
            self.cfg.train.autoencoder if self.stage == "autoencoder" else self.cfg.train.diffusion
        )

    @property
    def num_subjects(self) -> int:
        return len(self.subject_ids)

    def build_dataset(self, cines: list[np.ndarray]) -> Dataset[Tensor]:
        """One item per subject: (k, 1, H, W, T) slices or (k, S * D, h, w, t) latent stacks."""
        k = self.train_cfg.slices_per_subject
        if self.stage == "autoencoder":
            return SliceDataset(cines, k, seed=self.cfg.seed)
        assert self.frozen_autoencoder is not None
        latents = [
            encode_subject(self.frozen_autoencoder, c, self.device) * self.latent_scale
            for c in cines
        ]
        return LatentStackDataset(latents, stack_slices_of(self.cfg), k, seed=self.cfg.seed)

    def build_models(self) -> None:
        """``self.models``: {"autoencoder", "discriminator"} or {"unet"}, on the device."""
        if self.stage == "autoencoder":
            self.models = {
                "autoencoder": build_autoencoder(self.cfg),
                "discriminator": build_discriminator(self.cfg),
            }
        else:
            self.models = {"unet": build_denoiser(self.cfg)}
        for model in self.models.values():
            model.to(self.device).train()
            if self._cuda and self.cfg.train.channels_last:
                model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]

    def build_optimizers(self) -> None:
        """Adam(W) per model with a linear warm-up of ``warmup_steps`` then a constant lr.

        (A decay schedule would need the run's total step count, which a federated site does not
        know; decay is left to the federation's rounds.)
        """
        tc = self.train_cfg
        betas = (tc.betas[0], tc.betas[1])
        lrs = {"autoencoder": tc.lr, "discriminator": tc.lr_discriminator, "unet": tc.lr}
        self.optimizers = {
            name: torch.optim.AdamW(
                model.parameters(), lr=lrs[name], betas=betas, weight_decay=tc.weight_decay
            )
            for name, model in self.models.items()
        }
        warmup = tc.warmup_steps
        self.lr_schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
            )
            for name, opt in self.optimizers.items()
        }

    def build_dataloader(self) -> DataLoader[Tensor]:
        """Shuffled subjects, ``batch_size`` per step (capped at the number of subjects)."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(
            self.dataset,
            batch_size=min(self.train_cfg.batch_size, self.num_subjects),
            shuffle=True,
            drop_last=False,
            num_workers=self.cfg.train.num_workers,
            generator=generator,
        )

    # ----------------------------------------------------------------- helpers
    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda"

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._cuda and self.cfg.train.mixed_precision in ("auto", "bf16"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def flatten(batch: Tensor) -> Tensor:
        """(B, k, ...) per-subject items -> (B * k, ...) model inputs (the one place it happens)."""
        return batch.flatten(0, 1)

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self._cuda and self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def next_batch(self) -> Tensor:
        """Next (B, k, ...) batch; a new epoch reshuffles and redraws slices/windows."""
        while True:
            if self._batches is None:
                dataset = self.dataset
                if isinstance(dataset, SliceDataset | LatentStackDataset):
                    dataset.epoch = self.epoch
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch += 1
                continue
            if batch.shape[0] > 0:  # a Poisson loader may return an empty batch
                return batch

    def adversarial_on(self) -> bool:
        ae = self.cfg.autoencoder
        return ae.adversarial_weight > 0 and self.global_step >= ae.adversarial_start_step

    # ----------------------------------------------------------------- losses
    def autoencoder_losses(self, x: Tensor, adversarial: bool) -> dict[str, Tensor]:
        """Generator losses for (N, 1, H, W, T) slices; "loss" is the weighted total."""
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
            disc = self.models["discriminator"]
            # Under DP this runs inside torch.func transforms, which differentiate only the
            # generator's parameters and forbid requires_grad_; the DP step freezes D itself.
            toggle = self.privacy is None
            if toggle:
                disc.requires_grad_(False)
            logits = disc(out.reconstruction)
            if toggle:
                disc.requires_grad_(True)
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

    def diffusion_losses(self, latent_stacks: Tensor) -> Tensor:
        """Huber loss for (N, S * D, h, w, t) scaled latent stacks."""
        return diffusion_loss(
            self.models["unet"],
            self.noise_scheduler,
            latent_stacks,
            huber_delta=self.cfg.diffusion.huber_delta,
        )

    # ----------------------------------------------------------------- steps
    def _optimizer_step(self, name: str) -> None:
        nn.utils.clip_grad_norm_(self.models[name].parameters(), self.train_cfg.grad_clip)
        self.optimizers[name].step()
        self.lr_schedulers[name].step()

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accumulation`` batches); returns this step's losses."""
        dp_step = getattr(self.privacy, "train_step", None)
        if dp_step is not None:  # DP-SGD: per-subject clipping and noise (fedcmr4d.privacy)
            dp_metrics: dict[str, float] = dp_step(self)
            self.global_step += 1
            return dp_metrics
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        accum = self.train_cfg.grad_accumulation
        metrics: dict[str, float] = {}
        if self.stage == "autoencoder":
            adversarial = self.adversarial_on()
            for _ in range(accum):
                x = self._to_device(self.flatten(self.next_batch()))
                with self._autocast():
                    losses = self.autoencoder_losses(x, adversarial)
                (losses["loss"] / accum).backward()
                if adversarial:
                    with self._autocast():
                        d_loss = self.discriminator_losses(x, losses["reconstruction"])
                    (d_loss / accum).backward()
                    losses["adv_d"] = d_loss
                for key, value in losses.items():
                    if key != "reconstruction":
                        metrics[key] = metrics.get(key, 0.0) + float(value.detach()) / accum
            self._optimizer_step("autoencoder")
            if adversarial:
                self._optimizer_step("discriminator")
        else:
            for _ in range(accum):
                x = self._to_device(self.flatten(self.next_batch()))
                with self._autocast():
                    loss = self.diffusion_losses(x)
                (loss / accum).backward()
                metrics["loss"] = metrics.get("loss", 0.0) + float(loss.detach()) / accum
            self._optimizer_step("unet")
            self._update_ema()
        self.global_step += 1
        return metrics

    def train(self, steps: int, *, progress: bool = False) -> dict[str, float]:
        """Run ``steps`` optimizer steps; mean losses + "num-examples" (training subjects)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if self.cfg.privacy.enabled and getattr(self.privacy, "train_step", None) is None:
            raise ConfigError(
                "privacy.enabled is true but the trainer has no privacy hook "
                "(fedcmr4d.privacy.SitePrivacy); refusing to train without DP-SGD"
            )
        before_train = getattr(self.privacy, "before_train", None)
        if before_train is not None:  # raises BudgetExhaustedError before any step runs
            before_train(self, steps)
        for model in self.models.values():
            model.train()
        sums: dict[str, float] = {}
        bar = _progress(progress, steps, self.stage)
        with bar as live:
            task = live.add_task(self.stage, total=steps) if live else None
            for _ in range(steps):
                step_metrics = self.train_step()
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                if live is not None and task is not None:
                    shown = " ".join(f"{k}={v:.4f}" for k, v in step_metrics.items())
                    live.update(task, advance=1, description=f"{self.stage} {shown}")
        result = {key: value / max(steps, 1) for key, value in sums.items()}
        result["num-examples"] = float(self.num_subjects)
        after_train = getattr(self.privacy, "after_train", None)
        if after_train is not None:  # saves the site's ledger; adds "epsilon" and "delta"
            result.update(after_train(self))
        return result

    # ----------------------------------------------------------------- EMA
    def _reset_ema(self) -> None:
        decay = self.train_cfg.ema_decay
        if self.stage != "diffusion" or decay <= 0:
            self.ema = None
            return
        self.ema = {k: v.clone() for k, v in self.get_weights().items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm-up (as in common EMA implementations): with a fixed 0.999 the average of a
        # 1 500-step run would still hold 0.999 ** 1500 = 22 % of the random initial weights.
        step = self.global_step
        decay = min(self.train_cfg.ema_decay, (1 + step) / (10 + step))
        for key, param in self._named_parameters():
            self.ema[key].mul_(decay).add_(param.detach().float().cpu(), alpha=1 - decay)

    def ema_weights(self) -> dict[str, Tensor]:
        """``ema.unet.*`` copies (post-processing of the trained weights; empty when off)."""
        if self.ema is None:
            return {}
        return {f"ema.{k}": v.clone() for k, v in self.ema.items()}

    def set_ema_weights(self, weights: dict[str, Tensor]) -> None:
        ema = {k[len("ema.") :]: v for k, v in weights.items() if k.startswith("ema.")}
        if self.ema is not None and ema:
            self._check_weights(ema)
            self.ema = {k: v.detach().float().cpu().clone() for k, v in ema.items()}

    # ----------------------------------------------------------------- weights
    def _named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, model in self.models.items():
            for pname, param in model.named_parameters():
                yield f"{name}.{strip_prefixes(pname)}", param

    def get_weights(self) -> dict[str, Tensor]:
        """CPU float32 copies of every trained parameter, ``<model>.<param>``, in build order."""
        return {k: p.detach().float().cpu().clone() for k, p in self._named_parameters()}

    def _check_weights(self, weights: dict[str, Tensor]) -> None:
        expected = {k: tuple(p.shape) for k, p in self._named_parameters()}
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        if missing:
            raise ValueError(f"weights lack {len(missing)} key(s), e.g. {missing[0]!r}")
        if unexpected:
            raise ValueError(f"unexpected weight key(s), e.g. {unexpected[0]!r}")
        for key, shape in expected.items():
            if tuple(weights[key].shape) != shape:
                raise ValueError(
                    f"weight {key!r} has shape {tuple(weights[key].shape)}, expected {shape}"
                )

    @torch.no_grad()
    def set_weights(self, weights: dict[str, Tensor]) -> None:
        """Load parameters (strict); the EMA restarts from them."""
        self._check_weights(weights)
        for key, param in self._named_parameters():
            param.copy_(weights[key].to(device=param.device, dtype=param.dtype))
        self._reset_ema()

    # ----------------------------------------------------------------- state for --resume
    def state_dict(self) -> dict[str, Any]:
        """Optimizer/lr-scheduler states and counters (weights travel via the checkpoint)."""
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "lr_schedulers": {k: s.state_dict() for k, s in self.lr_schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state.get("epoch", 0))
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.lr_schedulers.items():
            sched.load_state_dict(state["lr_schedulers"][key])

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, subject_ids: Sequence[str]) -> dict[str, float]:
        """Held-out metrics. Stage 1: PSNR (dB), L1, code perplexity, dead codes, distinct codes
        per slice and the cosine of a latent position's code in consecutive frames (near 1:
        smooth latents stage 2 can learn; near 0.5: scrambled, docs/models.md). Stage 2: the
        diffusion loss at fixed noise/timesteps (seeded) on the subjects' latent stacks."""
        ids, cines = load_cines(
            self.cohort_dir,
            subject_ids,
            image_size=self.cfg.data.image_size,
            frames=self.cfg.data.frames,
        )
        for model in self.models.values():
            model.eval()
        try:
            if self.stage == "autoencoder":
                return self._evaluate_autoencoder(cines)
            return self._evaluate_diffusion(cines)
        finally:
            for model in self.models.values():
                model.train()

    def _evaluate_autoencoder(self, cines: list[np.ndarray]) -> dict[str, float]:
        model = self.models["autoencoder"]
        psnrs, l1s, indices, per_slice, frame_cos = [], [], [], [], []
        for cine in cines:
            x = self._to_device(cine_slices(cine))
            with self._autocast():
                out = model(x)
            recon = out.reconstruction.float()
            psnrs.append(psnr(recon, x))
            l1s.append(float(torch.mean(torch.abs(recon.clamp(0, 1) - x))))
            indices.append(out.quantizer.indices.reshape(-1).cpu())
            per_slice += [len(torch.unique(i)) for i in out.quantizer.indices]
            codes = out.quantizer.quantized.float()  # (Z, D, h, w, t), unit norm along D
            frame_cos.append(float((codes[..., 1:] * codes[..., :-1]).sum(dim=1).mean()))
        all_indices = torch.cat(indices)
        quantizer = _unwrap(model).quantizer
        used = int(torch.unique(all_indices).numel())
        return {
            "psnr": float(np.mean(psnrs)),
            "l1": float(np.mean(l1s)),
            "perplexity": float(quantizer.perplexity(all_indices)),
            "codes_used": float(used),
            "dead_codes": float(quantizer.num_embeddings - used),
            "codes_per_slice": float(np.mean(per_slice)),
            "latent_frame_cosine": float(np.mean(frame_cos)),
            "num-examples": float(len(cines)),
        }

    def _evaluate_diffusion(self, cines: list[np.ndarray]) -> dict[str, float]:
        assert self.frozen_autoencoder is not None
        s = stack_slices_of(self.cfg)
        stacks = []
        for cine in cines:
            lat = encode_subject(self.frozen_autoencoder, cine, self.device) * self.latent_scale
            stacks += [lat[i : i + s].flatten(0, 1) for i in range(0, lat.shape[0] - s + 1, s)]
        generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        losses = []
        for stack in stacks:
            x = self._to_device(stack.unsqueeze(0))
            g = generator if not self._cuda else None
            with self._autocast():
                loss = diffusion_loss(
                    self.models["unet"],
                    self.noise_scheduler,
                    x,
                    huber_delta=self.cfg.diffusion.huber_delta,
                    generator=g,
                )
            losses.append(float(loss))
        return {"val_loss": float(np.mean(losses)), "num-examples": float(len(cines))}


def _unwrap(model: nn.Module) -> Any:
    """The module inside an Opacus/compile wrapper (or the module itself)."""
    return getattr(model, "_module", model)


def _progress(enabled: bool, total: int, label: str) -> Any:
    from fedcmr4d.progress import progress_bar

    return progress_bar(enabled)
