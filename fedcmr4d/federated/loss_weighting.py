"""Loss-weighted aggregation: a site whose training loss is higher counts for more.

Why: FedAvg weighs sites by ``num-examples`` alone. When one site's data differ (the phantom
vendor B, whose fat is brighter than its blood), the average stays near the others and that
site's subjects are segmented worst (docs/evaluation.md, "Why the federated labeller misses
vendor B"). Pooled training does not lose them, because the subjects a model fits worst
give the largest gradients; each site's Adam steps have about the same size whatever its
loss, so the average loses that emphasis. Weighing each site's update by its loss raised to
``q`` is the aggregation of q-FFL (Li et al., "Fair Resource Allocation in Federated
Learning", ICLR 2020) in its simplest form: a weighted average, no step-size change.

The coordinator computes the weights. A site changes nothing and sends nothing new: the
training loss is already in its reply (without DP; under DP the site sends no loss, and its
factor is 1). The weight Flower aggregates by is :data:`AGGREGATION_KEY`, which the
coordinator writes into every accepted reply before aggregating, over whatever a site put
there. ``num-examples`` is left as the site declared it (the audit checks it).

A site can lie about its loss. The factor is the loss relative to the median site's, raised
to ``q`` and bounded to ``[1 / cap, cap]``. So a site that claims any loss at all gets at most
``cap`` times its FedAvg weight, and a site that sends no usable loss gets its FedAvg weight.
The ratio of any two sites' factors is at most ``cap ** 2`` (16 by default): in a federation
of two, where the median is the mean of the two losses, a liar can push the honest site
down to ``1 / cap`` while it takes ``cap``. That sits on top of what ``num-examples`` already
lets a site claim in its first round (``federation.max_num_examples``); against sites that lie
outright, use a robust strategy (``fedmedian``, ``krum``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Message

from fedcmr4d.federated.messages import site_name

#: The metric Flower's strategies are built to weight by (``weighted_by_key``).
AGGREGATION_KEY = "aggregation-weight"
#: The site's training loss that the factor is computed from.
LOSS_KEY = "loss"
EXAMPLES_KEY = "num-examples"


def usable_loss(value: object) -> float | None:
    """A loss that can weigh a site: finite and positive; None otherwise."""
    try:
        loss = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return loss if math.isfinite(loss) and loss > 0 else None


def loss_factors(
    losses: Mapping[str, float | None], *, power: float, cap: float
) -> dict[str, float]:
    """Each site's weight multiplier: ``clip((loss / median loss) ** power, 1 / cap, cap)``.

    Args:
        losses: site -> its training loss this round (None: the site sent none, e.g. under DP).
        power: q; 0 gives every site 1 (FedAvg).
        cap: the most a factor may multiply or divide a site's weight (>= 1).

    Returns:
        site -> factor; 1 for a site without a usable loss, and for every site when fewer
        than two sites sent one (one loss has nothing to be compared with).
    """
    usable = {site: usable_loss(v) for site, v in losses.items()}
    known = [v for v in usable.values() if v is not None]
    if power == 0 or len(known) < 2:
        return {site: 1.0 for site in losses}
    median = float(np.median(known))
    out = {}
    for site, loss in usable.items():
        if loss is None:
            out[site] = 1.0
            continue
        # In log space: a claimed loss of 1e300 must not overflow before the cap applies.
        log_factor = power * (math.log(loss) - math.log(median))
        out[site] = math.exp(min(math.log(cap), max(-math.log(cap), log_factor)))
    return out


def set_aggregation_weights(
    accepted: list[Message], *, power: float, cap: float
) -> dict[str, float]:
    """Write ``num-examples x factor`` as :data:`AGGREGATION_KEY` into each accepted reply.

    Always written (factor 1 with ``power`` 0), so a value a site sent under that key is
    never what weights the average.

    Returns:
        site label -> the factor used (the round's history row keeps it).
    """
    metrics = {site_name(r): r.content.metric_records["metrics"] for r in accepted}
    factors = loss_factors(
        {site: m.get(LOSS_KEY) for site, m in metrics.items()},  # type: ignore[misc]
        power=power,
        cap=cap,
    )
    for site, record in metrics.items():
        examples = float(record.get(EXAMPLES_KEY, 0.0))  # type: ignore[arg-type]
        record[AGGREGATION_KEY] = examples * factors[site]
    return factors
