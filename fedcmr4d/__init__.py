"""fedcmr4d: federated, private 4D cine CMR generation with audited, signed synthetic releases."""

from __future__ import annotations

__version__ = "0.1.0"
