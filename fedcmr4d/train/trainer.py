"""The generic training loop one stage runs at one site: the code `fedcmr4d train` and the Flower
ClientApp share.

:class:`StageTrainer` holds what every stage shares: the step counter and epochs, the data loader
over the stage's per-subject dataset, AdamW (or SGD under DP, ``privacy.optimizer``) with a linear
warm-up, the EMA of weights, weight exchange (``<model>.<parameter>``, wrapper prefixes
stripped) and ``--resume`` state. What differs per stage (models, dataset, losses, the plain and
the per-subject DP step, evaluation, checkpoint meta) is a
:class:`~fedcmr4d.stages.base.TrainingStage` from :mod:`fedcmr4d.stages`, built by
:func:`build_stage`.

Under DP the loop asks its :class:`~fedcmr4d.privacy.protocol.Privacy` object for the stage's
engine, wraps its optimizers with it and calls the stage's ``dp_step`` with it; the privacy
object never sees the trainer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fedcmr4d.config import Config, StageTrainConfig
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.data.datasets import load_cines
from fedcmr4d.devices import resolve_device
from fedcmr4d.errors import ConfigError
from fedcmr4d.privacy.engine import SubjectDP
from fedcmr4d.privacy.protocol import PRIVACY_METHODS, Privacy
from fedcmr4d.seeds import stable_seed
from fedcmr4d.stages import Stage
from fedcmr4d.stages.autoencoder import AutoencoderStage
from fedcmr4d.stages.base import Runtime, StepOptimizers, TrainingStage
from fedcmr4d.stages.diffusion import DiffusionStage, load_frozen_autoencoder
from fedcmr4d.stages.segmenter import SegmenterStage, load_labelled_subjects
from fedcmr4d.train.models import strip_prefixes
from fedcmr4d.train.optimizers import fused_adam

__all__ = ["StageTrainer", "build_stage", "load_frozen_autoencoder", "resolve_device"]

log = logging.getLogger(__name__)


def build_stage(
    stage: Stage,
    cfg: Config,
    cines: list[Any],
    runtime: Runtime,
    *,
    autoencoder_weights: dict[str, Tensor] | None = None,
) -> TrainingStage:
    """The stage object for ``stage`` (stage 2 needs the frozen stage-1 weights).

    ``cines``: (X, Y, Z, T) cines, or for the segmenter each subject's labelled frames
    (:func:`~fedcmr4d.stages.segmenter.load_labelled_subjects`).
    """
    if stage is Stage.AUTOENCODER:
        return AutoencoderStage(cfg, cines, runtime)
    if stage is Stage.SEGMENTER:
        return SegmenterStage(cfg, cines, runtime)
    if autoencoder_weights is None:
        raise ValueError("stage 'diffusion' needs autoencoder_weights (the frozen stage 1)")
    return DiffusionStage(cfg, cines, runtime, autoencoder_weights=autoencoder_weights)


def lr_factor(tc: StageTrainConfig, step: int, total_steps: int) -> float:
    """The lr multiplier of optimizer step ``step`` (0-based) of a stage of ``total_steps``.

    A linear warm-up over ``warmup_steps``, then constant or (``lr_schedule: cosine``) a cosine
    decay from 1 to ``min_lr_ratio`` at the last step. A function of the stage's true step, so a
    federated site, whose trainer is built anew every round, continues the schedule where the
    previous round left it instead of warming up again.
    """
    warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
    if tc.lr_schedule == "constant" or total_steps <= 1:
        return warm
    progress = min(1.0, max(0, step - tc.warmup_steps) / max(1, total_steps - 1 - tc.warmup_steps))
    return warm * (
        tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def build_optimizers(
    models: dict[str, nn.Module],
    lrs: dict[str, float],
    tc: StageTrainConfig,
    cfg: Config,
    dp: bool,
    factor: Callable[[], float],
) -> tuple[dict[str, torch.optim.Optimizer], dict[str, torch.optim.lr_scheduler.LRScheduler]]:
    """AdamW per model with the lr schedule ``factor()`` (:func:`lr_factor` of the next step).

    Under DP with ``privacy.optimizer: sgd``: SGD with momentum at ``privacy.sgd_lr``, constant.
    Adam divides each coordinate by its own RMS, so coordinates where the DP noise dominates
    (most of them at small batches) all move by about lr per step; SGD keeps their step in
    proportion to the noise, which averages out (docs/privacy.md).
    """
    p = cfg.privacy
    if dp and p.optimizer == "sgd":
        sgd = {
            name: torch.optim.SGD(model.parameters(), lr=p.sgd_lr, momentum=p.sgd_momentum)
            for name, model in models.items()
        }
        constant = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0) for name, opt in sgd.items()
        }
        return dict(sgd), dict(constant)
    betas = (tc.betas[0], tc.betas[1])
    optimizers: dict[str, torch.optim.Optimizer] = {
        name: torch.optim.AdamW(
            model.parameters(),
            lr=lrs[name],
            betas=betas,
            weight_decay=tc.weight_decay,
            fused=fused_adam(model.parameters()),
        )
        for name, model in models.items()
    }
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {
        name: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: factor())
        for name, opt in optimizers.items()
    }
    return optimizers, schedulers


class StageTrainer:
    """One stage's training loop at one site (local CLI and Flower ClientApp).

    Args:
        stage: ``Stage.AUTOENCODER`` (stage 1), ``Stage.DIFFUSION`` (stage 2) or
            ``Stage.SEGMENTER`` (trains on labelled subjects only), or its name.
        cfg: resolved config.
        cohort_dir: the site's cohort folder.
        device: "auto", "cpu" or "cuda"; "auto" defers to ``cfg.train.device``.
        subject_ids: training subjects (default: all in the cohort).
        autoencoder_weights: stage 2 only: the frozen stage-1 weights (``autoencoder.*``).
        privacy: the site's DP side (:class:`~fedcmr4d.privacy.protocol.Privacy`), or None.
        runtime: device/precision settings (default: from ``device`` and ``cfg.train``).
    """

    def __init__(
        self,
        stage: Stage | str,
        cfg: Config,
        cohort_dir: str | Path,
        *,
        device: str = "auto",
        subject_ids: Sequence[str] | None = None,
        autoencoder_weights: dict[str, Tensor] | None = None,
        privacy: Privacy | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.stage = Stage.parse(stage)
        self.cfg = cfg
        self.cohort_dir = Path(cohort_dir)
        if runtime is None:
            chosen = resolve_device(cfg.train.device if device == "auto" else device)
            runtime = Runtime.from_config(cfg, chosen)
        self.runtime = runtime
        self.device = runtime.device
        self._global_step = 0
        self.total_steps = cfg.train.stage(self.stage).steps
        self.epoch = 0
        if privacy is not None and not isinstance(privacy, Privacy):
            missing = [m for m in PRIVACY_METHODS if m not in dir(privacy)]
            raise TypeError(
                "privacy must implement fedcmr4d.privacy.protocol.Privacy; "
                f"{type(privacy).__name__} lacks {', '.join(missing) or 'callable methods'}"
            )
        tc = self.train_cfg
        if privacy is not None and tc.grad_accumulation != 1:
            raise ConfigError(
                f"train.{self.stage}.grad_accumulation: {tc.grad_accumulation} is not supported "
                "under DP (raise batch_size instead; per-subject gradients are computed in chunks)"
            )
        size, frames = cfg.data.image_size, cfg.data.frames
        cines: list[Any]
        # The subjects a DP step samples from: every training subject (the segmenter trains
        # on those with labelled frames, but the sample rate is planned over all of them).
        self.population: list[str]
        if self.stage is Stage.SEGMENTER:  # its subjects: those with labelled frames
            self.subject_ids, cines = load_labelled_subjects(
                cohort_dir, subject_ids, image_size=size, frames=frames
            )
            self.population = (
                list(subject_ids)
                if subject_ids is not None
                else list(open_cohort(cohort_dir).subject_ids)
            )
        else:
            self.subject_ids, cines = load_cines(
                cohort_dir, subject_ids, image_size=size, frames=frames
            )
            self.population = list(self.subject_ids)
        self.impl = build_stage(
            self.stage, cfg, cines, runtime, autoencoder_weights=autoencoder_weights
        )
        if isinstance(self.impl, SegmenterStage):
            position = {sid: i for i, sid in enumerate(self.subject_ids)}
            self.impl.population_positions = [position.get(sid) for sid in self.population]
        self.models = self.impl.models
        self.optimizers, self.lr_schedulers = build_optimizers(
            self.models,
            self.impl.learning_rates(),
            tc,
            cfg,
            dp=privacy is not None,
            factor=lambda: lr_factor(self.train_cfg, self._global_step, self.total_steps),
        )
        self.privacy = privacy
        self.engine: SubjectDP | None = None
        if privacy is not None:
            self.engine = privacy.attach(
                self.stage,
                models=self.models,
                n_subjects=len(self.population),
                start_step=self.global_step,
                device=self.device,
            )
            self.optimizers = {k: self.engine.wrap(o) for k, o in self.optimizers.items()}
        self.optim = StepOptimizers(
            self.models,
            self.optimizers,
            self.lr_schedulers,
            grad_clip=None if privacy is not None else tc.grad_clip,
        )
        # Reseeded at every epoch (stable_seed): an epoch's order depends on (seed, epoch) alone.
        self._shuffle = torch.Generator()
        self.loader: DataLoader[Tensor] = DataLoader(
            self.impl.dataset,
            batch_size=min(tc.batch_size, self.num_subjects),
            shuffle=True,
            drop_last=False,
            num_workers=cfg.train.num_workers,
            generator=self._shuffle,
        )
        self._batches: Iterator[Tensor] | None = None
        self.ema: dict[str, Tensor] | None = None
        self._reset_ema()

    @property
    def global_step(self) -> int:
        """Optimizer steps of this stage so far (across rounds in a federation)."""
        return self._global_step

    @global_step.setter
    def global_step(self, step: int) -> None:
        """Set the stage's step (a federated round, a resume) and the lr that goes with it."""
        self._global_step = int(step)
        self.sync_lr()

    def sync_lr(self) -> None:
        """Put every optimizer's lr at the schedule's value for the next step."""
        for sched in self.lr_schedulers.values():
            factors = [f(sched.last_epoch) for f in sched.lr_lambdas]  # type: ignore[attr-defined]
            for group, base, f in zip(
                sched.optimizer.param_groups, sched.base_lrs, factors, strict=True
            ):
                group["lr"] = base * f
            sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]  # type: ignore[attr-defined]

    @property
    def train_cfg(self) -> StageTrainConfig:
        return self.cfg.train.stage(self.stage)

    @property
    def num_subjects(self) -> int:
        return len(self.subject_ids)

    @property
    def dataset(self) -> Any:
        """The stage's per-subject dataset (one (k, ...) item per training subject)."""
        return self.impl.dataset

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the stage records in a checkpoint's ``meta.json`` (stage 2: latent scale)."""
        return self.impl.checkpoint_meta()

    # ----------------------------------------------------------------- steps
    @property
    def steps_per_epoch(self) -> int:
        """Batches in one epoch of the plain (non-DP) loop."""
        return len(self.loader)

    def start_at_epoch(self, epoch: int) -> None:
        """Draw the next batch from the start of ``epoch`` (a federated round's first epoch:
        :func:`fedcmr4d.federated.site.round_first_epoch`)."""
        self.epoch = int(epoch)
        self._batches = None

    def next_batch(self) -> Tensor:
        """Next (B, k, ...) batch; a new epoch reshuffles and redraws slices/windows.

        Both depend on ``(cfg.seed, epoch)`` alone, so a resumed run or a federated round that
        starts at a given epoch draws what an unbroken run would have drawn there.
        """
        while True:
            if self._batches is None:
                self.impl.set_epoch(self.epoch)
                self._shuffle.manual_seed(stable_seed(self.cfg.seed, "epoch", self.epoch))
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch += 1
                continue
            if batch.shape[0] > 0:
                return batch

    def train_step(self) -> dict[str, float]:
        """One optimizer step (DP: per-subject clipping and noise); returns this step's losses."""
        if self.engine is not None:
            metrics = self.impl.dp_step(self.global_step, self.engine, self.optim)
        else:
            self.optim.zero_grad()
            accumulation = self.train_cfg.grad_accumulation
            metrics = self.impl.train_step(
                self.global_step, self.next_batch, self.optim, accumulation
            )
        self._update_ema()
        self._global_step += 1
        self.sync_lr()
        return metrics

    def train(self, steps: int, *, progress: bool = False) -> dict[str, float]:
        """Run ``steps`` optimizer steps; mean losses + "num-examples" (training subjects)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if self.cfg.privacy.enabled and self.privacy is None:
            raise ConfigError(
                "privacy.enabled is true but the trainer has no privacy object "
                "(fedcmr4d.privacy.SitePrivacy); refusing to train without DP-SGD"
            )
        if self.privacy is not None:  # raises BudgetExhaustedError before any step runs
            self.privacy.before_train(self.stage, steps=steps, start_step=self.global_step)
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
        if self.privacy is not None:  # saves the site's ledger; adds "epsilon" and "delta"
            result.update(self.privacy.after_train())
        return result

    # ----------------------------------------------------------------- EMA
    def _reset_ema(self) -> None:
        if not self.impl.uses_ema or self.train_cfg.ema_decay <= 0:
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
        self.sync_lr()

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, subject_ids: Sequence[str]) -> dict[str, float]:
        """Held-out metrics of the stage on ``subject_ids`` (see each stage's ``evaluate``;
        the segmenter scores the subjects' labelled frames)."""
        geometry = {"image_size": self.cfg.data.image_size, "frames": self.cfg.data.frames}
        for model in self.models.values():
            model.eval()
        try:
            if isinstance(self.impl, SegmenterStage):
                _, frames = load_labelled_subjects(
                    self.cohort_dir, subject_ids, **geometry, required=False
                )
                return self.impl.evaluate_frames(frames)
            _, cines = load_cines(self.cohort_dir, subject_ids, **geometry)
            return self.impl.evaluate(cines)
        finally:
            for model in self.models.values():
                model.train()


def _progress(enabled: bool, total: int, label: str) -> Any:
    from fedcmr4d.progress import progress_bar

    return progress_bar(enabled)
