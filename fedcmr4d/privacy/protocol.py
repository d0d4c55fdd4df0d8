"""What the training loop asks of a site's privacy side: the :class:`Privacy` protocol.

The contract runs one way. The loop (:class:`~fedcmr4d.train.trainer.StageTrainer`) hands the
privacy object the stage's models and counters; it gets back a
:class:`~fedcmr4d.privacy.engine.SubjectDP` engine (Poisson sampler of subjects, per-subject
gradients, the ``DPOptimizer`` wrapping that clips, noises and counts every step in the site's
ledger). The stage's own DP step then asks that engine for clipped, noised gradients. The privacy
side never sees the trainer, its optimizers' internals or its data loader.

:class:`~fedcmr4d.privacy.site.SitePrivacy` implements it; mypy checks that, and the loop refuses
(``TypeError``) an object that does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from fedcmr4d.privacy.engine import SubjectDP
from fedcmr4d.stages import Stage

#: The methods of :class:`Privacy` (for the loop's error message).
PRIVACY_METHODS = ("attach", "before_train", "after_train", "checkpoint_meta")


@runtime_checkable
class Privacy(Protocol):
    """A site's DP ledger and budget as one stage's training loop uses it."""

    def attach(
        self,
        stage: Stage,
        *,
        models: Mapping[str, nn.Module],
        n_subjects: int,
        start_step: int,
        device: torch.device,
    ) -> SubjectDP:
        """Check ``models`` for DP (no BatchNorm, no data-written buffers) and return the engine
        for ``stage``; the loop wraps its optimizers with ``engine.wrap``."""
        ...

    def before_train(self, stage: Stage, *, steps: int, start_step: int) -> None:
        """Refuse (``BudgetExhaustedError``) ``steps`` more steps past the budget, before any."""
        ...

    def after_train(self) -> dict[str, float]:
        """Persist the ledger; ``{"epsilon", "delta"}`` spent so far for the round's metrics."""
        ...

    def checkpoint_meta(self) -> dict[str, object]:
        """What a checkpoint's ``meta.json`` records about privacy."""
        ...
