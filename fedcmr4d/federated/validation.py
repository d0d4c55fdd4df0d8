"""Server-side checks of site updates before aggregation.

A site's reply is rejected (and the round goes on with the rest) when

- its ``num-examples`` is not a finite number in (0, ``max_num_examples``], or differs from what
  the site declared in its first round (a site claiming 10^12 subjects would dominate FedAvg);
- its weights do not match the global model's keys, shapes or dtypes, or contain NaN/Inf;
- its update moves the model further than ``max_update_norm`` x ``||w_global||`` (an absolute
  bar: it holds for a single reply);
- its update norm ``||w_site - w_global||`` is over ``max_norm_ratio`` x the median norm of the
  *other* updates, so that with only two sites a single huge update is still caught (a median
  over both would be dragged up by it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Rejection:
    """Why one site's update was left out of a round."""

    site: str
    reason: str


@dataclass
class ValidationReport:
    """Sites whose updates go into aggregation, and those left out with a reason each."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    update_norms: dict[str, float] = field(default_factory=dict)


def structural_problem(
    reference: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
) -> str | None:
    """The first mismatch of keys, shapes, dtypes or finiteness, or None when it fits.

    Args:
        reference: the global weights the round started from.
        update: a site's returned weights.
    """
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        return f"wrong keys (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, ref in reference.items():
        value = update[name]
        if tuple(value.shape) != tuple(ref.shape):
            return f"{name}: shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if value.dtype != ref.dtype:
            return f"{name}: dtype {value.dtype}, expected {ref.dtype}"
        if not np.isfinite(value).all():
            return f"{name}: contains NaN or Inf"
    return None


def update_norm(reference: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``update - reference`` over all parameters, in float64."""
    total = 0.0
    for name, ref in reference.items():
        delta = update[name].astype(np.float64) - ref.astype(np.float64)
        total += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(total)


def validate_updates(
    reference: Mapping[str, np.ndarray],
    updates: Sequence[tuple[str, Mapping[str, np.ndarray], float]],
    *,
    max_norm_ratio: float,
    max_update_norm: float = math.inf,
    max_num_examples: float = math.inf,
    declared_examples: Mapping[str, float] | None = None,
) -> ValidationReport:
    """Check every site update; the caller aggregates only ``report.accepted``.

    Args:
        reference: global weights sent out this round (name -> array).
        updates: (site label, returned weights, num-examples) per reply.
        max_norm_ratio: reject an update whose norm exceeds this multiple of the median norm of
            the other structurally valid updates (``federation.max_update_norm_ratio``).
        max_update_norm: reject an update whose norm exceeds this multiple of the global
            model's L2 norm (``federation.max_update_norm``), whatever the other sites sent.
        max_num_examples: the largest ``num-examples`` accepted (``federation.max_num_examples``).
        declared_examples: site label -> the ``num-examples`` it declared in its first round.

    Returns:
        A report listing accepted site labels, rejections with reasons, and update norms.
    """
    report = ValidationReport()
    fitting: dict[str, float] = {}
    declared = dict(declared_examples or {})
    global_norm = math.sqrt(
        sum(float(np.dot(r.astype(np.float64).ravel(), r.astype(np.float64).ravel()))
            for r in reference.values())
    )  # fmt: skip
    absolute_bar = max_update_norm * global_norm
    for site, weights, num_examples in updates:
        if not (math.isfinite(num_examples) and 0 < num_examples <= max_num_examples):
            report.rejected.append(
                Rejection(
                    site, f"num-examples is {num_examples:g} (accepted: 1..{max_num_examples:g})"
                )
            )
            continue
        if site in declared and num_examples != declared[site]:
            report.rejected.append(
                Rejection(
                    site,
                    f"num-examples is {num_examples:g}, the site declared {declared[site]:g} "
                    "in its first round",
                )
            )
            continue
        problem = structural_problem(reference, weights)
        if problem is not None:
            report.rejected.append(Rejection(site, problem))
            continue
        norm = update_norm(reference, weights)
        if norm > absolute_bar:
            report.update_norms[site] = norm
            report.rejected.append(
                Rejection(
                    site,
                    f"update norm {norm:.4g} is over {max_update_norm:g} x the global model's "
                    f"norm {global_norm:.4g} (federation.max_update_norm)",
                )
            )
            continue
        fitting[site] = norm
    report.update_norms |= fitting
    for site, norm in fitting.items():
        others = [n for s, n in fitting.items() if s != site]
        bar = float(np.median(others)) * max_norm_ratio if others else math.inf
        if others and norm > bar and norm > 1e-12:
            report.rejected.append(
                Rejection(
                    site,
                    f"update norm {norm:.4g} is over {max_norm_ratio:g} x the median "
                    f"{float(np.median(others)):.4g} of the other sites",
                )
            )
        else:
            report.accepted.append(site)
    return report
