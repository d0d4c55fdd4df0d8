"""Evaluation: FID across depth, LV function over the cycle, and an HTML report.

``evaluate_cohorts(synthetic_dir, real_dir, out_dir, *, segmenter_dir=None, cfg=None)`` is the
Python entry point (the ``fedcmr4d evaluate`` command and ``fedcmr4d demo`` call it).
"""

from __future__ import annotations

from fedcmr4d.evaluate.pipeline import evaluate_cohorts

__all__ = ["evaluate_cohorts"]
