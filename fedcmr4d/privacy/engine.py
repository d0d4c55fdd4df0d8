"""DP-SGD with the SUBJECT as privacy unit: per-subject gradients by ``torch.func``, Opacus clips.

Why ``vmap`` over subjects rather than Opacus's per-row ``grad_sample`` summed per subject:
the loss of one subject is computed from that subject's k slices (or latent stacks) alone, as a
batch of k, inside ``torch.func.vmap(torch.func.grad(...))`` over the subject axis. So

* every term of the loss, including terms that couple the rows of a batch (the codebook entropy
  over code usage, means over the batch), is a function of ONE subject's data only, and its
  gradient is clipped as one sample. Summing Opacus's per-row gradients would be wrong for such
  terms: a row's gradient there depends on other subjects' rows and clipping does not bound it;
* no forward hooks are involved, so the discriminator can be run on fakes inside the
  generator's loss without the stale-activation problem of Opacus's hooks mode (FIELD-NOTES);
* any layer ``torch.func`` differentiates is supported (3D convs, transposed convs, GroupNorm,
  attention), with no ``_module.`` prefixes in state dicts.

The per-subject gradients are handed to Opacus's :class:`~opacus.optimizers.DPOptimizer`
(``p.grad_sample``, shape (B, *p.shape)), which clips each subject's whole gradient (all
parameters of that optimizer together) to ``max_grad_norm``, sums, adds N(0, σ²C²) noise and
divides by the expected batch size. Batches are Poisson samples of subjects (each subject
independently with probability q = batch_size / N); every DP optimizer step draws its own sample
so that each step is one subsampled Gaussian mechanism for the accountant.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedcmr4d.errors import ConfigError
from fedcmr4d.privacy.accounting import SiteAccountant

LossOutput = Tensor | tuple[Tensor, dict[str, Tensor]]
LossFn = Callable[..., LossOutput]


class _Closure(nn.Module):
    """Holds ``model`` as a submodule so ``functional_call`` swaps its parameters for ``fn``."""

    def __init__(self, model: nn.Module, fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *inputs: Any) -> LossOutput:
        return self.fn(*inputs)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name → parameter for every parameter with ``requires_grad`` (deterministic order)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def per_subject_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    *subject_inputs: Tensor,
    chunk_size: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Set ``p.grad_sample`` (B, *p.shape) on ``model``'s trainable parameters, one row per subject.

    ``loss_fn(*inputs)`` is called once per subject with that subject's slice of each input —
    e.g. ``x`` of shape (k, 1, H, W, T) for a stage-1 subject with k slices — and must compute
    the subject's loss by calling ``model`` (any of its methods): its parameters are swapped for
    the per-subject functional copies during the call. Other modules it calls (the
    discriminator inside the generator's loss) are constants. Randomness inside ``loss_fn``
    (diffusion noise, timesteps) differs per subject.

    Args:
        model: module whose parameters the DP optimizer updates.
        loss_fn: returns the scalar loss, or ``(loss, {name: scalar})`` to log components.
        subject_inputs: tensors with the subject axis first, (B, k, ...).
        chunk_size: subjects per vmap chunk (memory vs speed), ``None`` for all at once.

    Returns:
        Per-subject losses (B,) and components ``{name: (B,)}``, detached.
    """
    if not subject_inputs:
        raise ValueError("per_subject_gradients: at least one input with a subject axis needed")
    n = subject_inputs[0].shape[0]
    if any(x.shape[0] != n for x in subject_inputs):
        raise ValueError("per_subject_gradients: every input needs the same subject axis length")
    params = trainable_parameters(model)
    if n == 0:  # an empty Poisson sample: the step still releases noise
        for p in params.values():
            empty = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            p.grad_sample = empty  # type: ignore[attr-defined]
        return torch.zeros(0), {}
    closure = _Closure(model, loss_fn)
    frozen = {n_: p.detach() for n_, p in params.items()}

    def one_subject(values: dict[str, Tensor], *inputs: Tensor) -> tuple[Tensor, Any]:
        out = functional_call(closure, {f"model.{k}": v for k, v in values.items()}, inputs)
        loss, parts = out if isinstance(out, tuple) else (out, {})
        return loss, (loss.detach(), {k: v.detach() for k, v in parts.items()})

    in_dims = (None,) + (0,) * len(subject_inputs)
    with warnings.catch_warnings():
        # ops without a batching rule (bincount for code perplexity) fall back to a loop
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        grads, (losses, parts) = vmap(
            grad(one_subject, has_aux=True),
            in_dims=in_dims,
            randomness="different",
            chunk_size=chunk_size,
        )(frozen, *subject_inputs)
    for name, p in params.items():
        p.grad_sample = grads[name].detach()  # type: ignore[attr-defined]
    return losses, parts


class PoissonSubjectSampler:
    """Poisson sampling of subject indices: each subject joins a batch with probability q.

    Args:
        n_subjects: N, the site's training subjects.
        sample_rate: q (the expected batch size is q·N).
        generator: source of randomness (``None``: torch's default generator).
    """

    def __init__(
        self, n_subjects: int, sample_rate: float, generator: torch.Generator | None = None
    ) -> None:
        if n_subjects < 1:
            raise ValueError("PoissonSubjectSampler: no subjects to sample")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"PoissonSubjectSampler: sample_rate {sample_rate} not in (0, 1]")
        self.n_subjects = n_subjects
        self.sample_rate = sample_rate
        self.generator = generator

    def draw(self) -> list[int]:
        """One batch: the indices of the subjects that were sampled (possibly none)."""
        mask = torch.rand(self.n_subjects, generator=self.generator) < self.sample_rate
        return mask.nonzero().flatten().tolist()


class SubjectDP:
    """DP-SGD for one stage at one site: Poisson sampler, DP optimizers, per-subject gradients.

    Every step of every optimizer wrapped by :meth:`wrap` is recorded in ``ledger`` (the site's
    single accountant) with this stage's sample rate, σ and clip bound.

    Args:
        stage: ``autoencoder`` or ``diffusion`` (labels the ledger's segments).
        ledger: the site's :class:`SiteAccountant`.
        n_subjects: N, the site's training subjects.
        batch_size: expected subjects per batch; q = batch_size / N.
        noise_multiplier: σ (noise std = σ · max_grad_norm on the summed clipped gradients).
        max_grad_norm: C, the clip bound of one subject's whole gradient per optimizer.
        generator: randomness for Poisson sampling.
        noise_generator: randomness for the Gaussian noise (on the parameters' device).
    """

    def __init__(
        self,
        *,
        stage: str,
        ledger: SiteAccountant,
        n_subjects: int,
        batch_size: int,
        noise_multiplier: float,
        max_grad_norm: float,
        generator: torch.Generator | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> None:
        if batch_size > n_subjects:
            raise ConfigError(
                f"train.{stage}.batch_size: {batch_size} is more than the site's {n_subjects} "
                "training subjects; under DP the sample rate batch_size / N must be <= 1"
            )
        self.stage = stage
        self.ledger = ledger
        self.n_subjects = n_subjects
        self.batch_size = batch_size
        self.sample_rate = batch_size / n_subjects
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.sampler = PoissonSubjectSampler(n_subjects, self.sample_rate, generator)
        self.noise_generator = noise_generator
        self.last_batch_size = 0  # local diagnostics only: never a metric that leaves the site

    def wrap(self, optimizer: torch.optim.Optimizer) -> DPOptimizer:
        """Wrap ``optimizer`` so its steps clip per subject, add noise and count in the ledger."""
        dp = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
            generator=self.noise_generator,
        )
        dp.attach_step_hook(self._account)
        return dp

    def _account(self, _optimizer: DPOptimizer) -> None:
        self.ledger.step(
            stage=self.stage,
            sample_rate=self.sample_rate,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
        )

    def draw(self) -> list[int]:
        """Indices (into the site's training subjects) of one Poisson batch."""
        indices = self.sampler.draw()
        self.last_batch_size = len(indices)
        return indices

    @staticmethod
    def backward(
        model: nn.Module, loss_fn: LossFn, *subject_inputs: Tensor, chunk_size: int | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-subject gradients of ``loss_fn`` into ``p.grad_sample`` (see
        :func:`per_subject_gradients`); call the wrapped optimizer's ``step()`` next."""
        return per_subject_gradients(model, loss_fn, *subject_inputs, chunk_size=chunk_size)
