"""What the generic loop (:class:`~fedcmr4d.train.trainer.StageTrainer`) asks of a stage.

A stage owns its models, its dataset (one item per SUBJECT, the DP privacy unit), its losses, a
plain step and a per-subject DP step, and its held-out evaluation. The loop owns what every stage
shares: optimizers and their warm-up, the data loader and epochs, the step counter, EMA of
weights, weight exchange and resume state. Both sides meet in :class:`TrainingStage` (checked by
mypy) and in :class:`StepOptimizers` / :class:`Runtime`, the only loop parts a stage touches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fedcmr4d.config import Config
from fedcmr4d.stages import Stage

if TYPE_CHECKING:
    from fedcmr4d.privacy.engine import SubjectDP


@dataclass(frozen=True)
class Runtime:
    """Device and precision a stage runs under.

    Args:
        device: where models and batches live.
        channels_last: ``channels_last_3d`` models and inputs.
        bf16: ``torch.autocast(bfloat16)`` around the losses.
    """

    device: torch.device
    channels_last: bool = False
    bf16: bool = False

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> Runtime:
        """``train.channels_last`` and ``train.mixed_precision`` apply on CUDA only."""
        cuda = device.type == "cuda"
        return cls(
            device,
            channels_last=cuda and cfg.train.channels_last,
            bf16=cuda and cfg.train.mixed_precision in ("auto", "bf16"),
        )

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, in train mode (channels-last when set)."""
        model.to(self.device).train()
        if self.channels_last:
            model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        return model


class StepOptimizers:
    """The loop's optimizers as a stage's step sees them: ``step(name)`` after a backward.

    Args:
        models: the stage's models (for the global-norm clip).
        optimizers: one per model; under DP the Opacus ``DPOptimizer`` wrappers, whose step clips
            each subject's gradient, adds noise and counts in the site's ledger.
        schedulers: one lr scheduler per optimizer.
        grad_clip: global-norm clip before each step; ``None`` under DP (per-subject clipping
            replaces it).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
        *,
        grad_clip: float | None,
    ) -> None:
        self.models = models
        self.optimizers = optimizers
        self.schedulers = schedulers
        self.grad_clip = grad_clip

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def step(self, name: str) -> None:
        """Clip (without DP), step ``name``'s optimizer and lr schedule, clear its gradients."""
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.models[name].parameters(), self.grad_clip)
        self.optimizers[name].step()
        self.schedulers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)


class TrainingStage(Protocol):
    """One stage plugged into the generic loop (see the module docstring).

    Attributes:
        stage: which stage this is.
        uses_ema: whether the loop keeps an EMA of the weights (``train.<stage>.ema_decay``).
        models: name -> module, on the runtime's device; weights are exchanged as
            ``<name>.<parameter>``.
    """

    stage: ClassVar[Stage]
    uses_ema: ClassVar[bool]
    models: dict[str, nn.Module]

    @property
    def dataset(self) -> Dataset[Tensor]:
        """One (k, ...) item per training subject."""
        ...

    def learning_rates(self) -> dict[str, float]:
        """Base learning rate per model (keys of :attr:`models`)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Redraw the dataset's random slices/windows for ``epoch``."""
        ...

    def train_step(
        self, step: int, next_batch: Callable[[], Tensor], optim: StepOptimizers, accumulation: int
    ) -> dict[str, float]:
        """One plain optimizer step over ``accumulation`` batches of (B, k, ...) items."""
        ...

    def dp_step(self, step: int, engine: SubjectDP, optim: StepOptimizers) -> dict[str, float]:
        """One DP-SGD step: Poisson samples of subjects from ``engine``, per-subject gradients by
        ``engine.backward``, then ``optim.step`` (clip per subject, noise, account)."""
        ...

    def evaluate(self, cines: list[np.ndarray]) -> dict[str, float]:
        """Held-out metrics on (X, Y, Z, T) cines (models already in eval mode, no grad)."""
        ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """What this stage adds to a checkpoint's ``meta.json``."""
        ...


def flatten(batch: Tensor) -> Tensor:
    """(B, k, ...) per-subject items -> (B * k, ...) model inputs (the one place it happens)."""
    return batch.flatten(0, 1)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """``model`` as a constant (no gradients for its parameters) inside the block.

    Set outside any ``torch.func`` transform (which forbids ``requires_grad_`` inside).
    """
    model.requires_grad_(False)
    try:
        yield
    finally:
        model.requires_grad_(True)


def subjects_batch(dataset: Dataset[Tensor], indices: list[int], runtime: Runtime) -> Tensor:
    """(B, k, ...) items of the sampled subjects (B may be 0), on the runtime's device."""
    if indices:
        batch = torch.stack([dataset[i] for i in indices])
    else:
        item = dataset[0]
        batch = item.new_zeros((0, *item.shape))
    return runtime.to_device(batch)


def mean_or_none(values: Tensor) -> float | None:
    """Mean of per-subject values; ``None`` for an empty Poisson sample."""
    return float(values.mean()) if values.numel() else None


def collect_means(metrics: dict[str, float], parts: Mapping[str, Tensor]) -> None:
    """Add the mean of each per-subject component to ``metrics`` (skipping empty samples)."""
    for key, values in parts.items():
        mean = mean_or_none(values)
        if mean is not None:
            metrics[key] = mean
