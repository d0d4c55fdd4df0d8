"""Differential privacy at a site: Opacus DP-SGD with the subject as privacy unit.

- :mod:`~fedcmr4d.privacy.engine`: per-subject gradients (``torch.func.vmap``), Poisson sampling
  of subjects, Opacus ``DPOptimizer`` wrapping.
- :mod:`~fedcmr4d.privacy.accounting`: the site's ledger (one accountant for all stages and
  rounds), ε at δ, ``privacy.json``.
- :mod:`~fedcmr4d.privacy.budget`: refuse plans past the target ε; derive σ from the budget.
- :mod:`~fedcmr4d.privacy.guards`: refuse BatchNorm and data-written buffers, naming the layer.
- :mod:`~fedcmr4d.privacy.protocol`: :class:`Privacy`, the typed contract the training loop calls.
- :mod:`~fedcmr4d.privacy.site`: :class:`SitePrivacy`, what ``StageTrainer(privacy=...)`` takes.
"""

from fedcmr4d.privacy.accounting import PRIVACY_FILE, Segment, SiteAccountant, default_delta
from fedcmr4d.privacy.budget import check_budget, derive_noise_multiplier
from fedcmr4d.privacy.engine import PoissonSubjectSampler, SubjectDP, per_subject_gradients
from fedcmr4d.privacy.guards import check_dp_model
from fedcmr4d.privacy.protocol import Privacy
from fedcmr4d.privacy.site import SitePrivacy, releasable_metrics

__all__ = [
    "PRIVACY_FILE",
    "PoissonSubjectSampler",
    "Privacy",
    "Segment",
    "SiteAccountant",
    "SitePrivacy",
    "SubjectDP",
    "check_budget",
    "check_dp_model",
    "default_delta",
    "derive_noise_multiplier",
    "per_subject_gradients",
    "releasable_metrics",
]
