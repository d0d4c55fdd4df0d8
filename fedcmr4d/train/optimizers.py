"""Optimizer settings shared by every training loop (the stages and the evaluation segmenter)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def fused_adam(params: Iterable[nn.Parameter]) -> bool | None:
    """Adam(W)'s ``fused`` argument: True where torch has a fused kernel for every parameter.

    None (torch's own choice) otherwise, e.g. for an empty or integer parameter list.

    The same update as the per-tensor loop torch picks by default on CPU (within float
    rounding), in one kernel: the demo's stage-2 UNet (182 tensors) steps in 6 ms instead of
    20 ms on one CPU thread (docs/benchmarks.md). Opacus' DP optimizer wraps it unchanged.
    """
    params = list(params)
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if params and fusable else None
