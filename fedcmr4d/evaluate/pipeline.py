"""``evaluate_cohorts``: synthetic vs real cohort -> metrics.json, plots and report.html.

One pass over each cohort, one subject in memory at a time: the segmenter labels every frame
(LV volume curve, EDV, ESV, EF, smoothness) and the feature network turns every frame into a
feature vector (N, Z, T, D) for FID across depth. Real subjects' EF comes from their ED/ES labels
where they have them; everything else from the segmenter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.config import Config
from fedcmr4d.data.cohort import Cohort, open_cohort
from fedcmr4d.errors import InputError
from fedcmr4d.evaluate import report
from fedcmr4d.evaluate.features import FeatureNetwork
from fedcmr4d.evaluate.fid import depth_moments, fid_across_depth
from fedcmr4d.evaluate.lv import LVFunction, ef_wasserstein, lv_function
from fedcmr4d.evaluate.segmenter import load_segmenter, segment_cine, train_segmenter
from fedcmr4d.evaluate.sharpness import EDGE_PERCENTILE, edge_sharpness
from fedcmr4d.io import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class CohortAnalysis:
    """What one pass over a cohort keeps.

    Attributes:
        features: (N, Z, T, D) per-frame features.
        lv: subject id -> LV function.
        truth_ef: subject id -> phantom truth EF in % (``meta["ef_true"]`` is a fraction).
        sharpness: subject id -> edge sharpness
            (:func:`~fedcmr4d.evaluate.sharpness.edge_sharpness`).
        shown: the first few subjects' (cine (X, Y, Z, T), frame_ms), for GIFs and montages.
    """

    ids: list[str]
    features: np.ndarray
    lv: dict[str, LVFunction]
    truth_ef: dict[str, float] = field(default_factory=dict)
    sharpness: dict[str, float] = field(default_factory=dict)
    shown: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)


def analyse_cohort(
    cohort: Cohort, segmenter: Any, features: FeatureNetwork, *, keep: int, use_labels: bool
) -> CohortAnalysis:
    """Segment and featurise every subject; all subjects must share (Z, T)."""
    ids = cohort.subject_ids
    if not ids:
        raise InputError(f"{cohort.root}: the cohort lists no subjects")
    stack: list[np.ndarray] = []
    lv: dict[str, LVFunction] = {}
    truth: dict[str, float] = {}
    sharpness: dict[str, float] = {}
    shown: dict[str, tuple[np.ndarray, float]] = {}
    shape: tuple[int, int] | None = None
    for subject_id in ids:
        subject = cohort.load(subject_id, with_labels=use_labels)
        z_t = subject.cine.shape[2:]
        if shape is None:
            shape = z_t
        elif z_t != shape:
            raise InputError(
                f"{cohort.root / subject_id}: (slices, frames) {z_t} differ from the cohort's "
                f"first subject {shape}"
            )
        predicted = segment_cine(segmenter, subject.cine)
        lv[subject_id] = lv_function(
            predicted, subject.zooms, labels=subject.labels, meta=subject.meta
        )
        stack.append(features.cine(subject.cine))
        sharpness[subject_id] = edge_sharpness(subject.cine, subject.zooms)
        if "ef_true" in subject.meta:
            truth[subject_id] = 100.0 * float(subject.meta["ef_true"])
        if len(shown) < keep:
            shown[subject_id] = (subject.cine, subject.frame_ms)
    return CohortAnalysis(ids, np.stack(stack), lv, truth, sharpness, shown)


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _std(values: list[float]) -> float | None:
    """Sample standard deviation (ddof 1) of the finite values; None below two."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite, ddof=1)) if len(finite) >= 2 else None


def real_halves(n_real: int) -> tuple[slice, slice] | None:
    """The two disjoint halves of ``m = n_real // 2`` alternate real subjects; None below 4."""
    if n_real < 4:
        return None
    m = n_real // 2
    return slice(0, 2 * m, 2), slice(1, 2 * m, 2)


def real_real_fid(features: np.ndarray) -> list[float] | None:
    """FID per depth between two halves of the real cohort (alternate subjects, ``N // 2``
    each); None if the cohort has fewer than 4 subjects."""
    halves = real_halves(features.shape[0])
    if halves is None:
        return None
    a, b = halves
    return fid_across_depth(depth_moments(features[a]), depth_moments(features[b]))


def matched_fid(synthetic: np.ndarray, real: np.ndarray) -> tuple[list[float], int] | None:
    """Synthetic-real FID per depth at the real-real baseline's sample sizes.

    FID is biased upwards by small samples (the covariance of m subjects' frames), so a ratio
    against the real-real baseline (``N // 2`` vs ``N // 2`` subjects) is like with like only at
    equal sizes: ``m = N // 2`` synthetic subjects are compared with each real half (the first
    m with half A, the next m with half B when there are 2m, else the same m with both) and the
    two FIDs are averaged per depth.

    Args:
        synthetic, real: (N, Z, T, D) per-frame features.

    Returns:
        (FID per depth, m), or None when the baseline or m synthetic subjects are missing.
    """
    halves = real_halves(real.shape[0])
    if halves is None:
        return None
    m = real.shape[0] // 2
    if synthetic.shape[0] < m:
        return None
    second = synthetic[m : 2 * m] if synthetic.shape[0] >= 2 * m else synthetic[:m]
    fids = [
        fid_across_depth(depth_moments(syn), depth_moments(real[half]))
        for syn, half in zip((synthetic[:m], second), halves, strict=True)
    ]
    return [float(v) for v in np.mean(np.asarray(fids), axis=0)], m


def _segmenter_dir(real: Cohort, out_dir: Path, segmenter_dir: Path | None, cfg: Config) -> Path:
    if segmenter_dir is not None:
        return segmenter_dir
    target = out_dir / "segmenter"
    log.info("no --segmenter given: training one on %s into %s", real.root, target)
    train_segmenter(real, target, cfg)
    return target


def _segmenter_accuracy(real: CohortAnalysis) -> dict[str, Any] | None:
    """Segmenter EF vs the phantom's truth (only cohorts whose meta has ``ef_true``)."""
    errors = [
        real.lv[sid].ef_segmenter - truth
        for sid, truth in real.truth_ef.items()
        if math.isfinite(real.lv[sid].ef_segmenter)
    ]
    if not errors:
        return None
    abs_err = np.abs(errors)
    return {
        "n": len(errors),
        "mean_abs_error": float(abs_err.mean()),
        "max_abs_error": float(abs_err.max()),
        "mean_error": float(np.mean(errors)),
        "share_within_5": float(np.mean(abs_err <= 5.0)),
    }


def build_metrics(
    synthetic: CohortAnalysis, real: CohortAnalysis, feature_net: FeatureNetwork
) -> dict[str, Any]:
    """The metrics.json content (DESIGN.md names the first keys)."""
    if synthetic.features.shape[1] != real.features.shape[1]:
        raise InputError(
            f"synthetic cohort has {synthetic.features.shape[1]} slice positions, real cohort "
            f"{real.features.shape[1]}: FID across depth needs the same number"
        )
    fid = fid_across_depth(depth_moments(synthetic.features), depth_moments(real.features))
    baseline = real_real_fid(real.features)
    rr_mean = float(np.mean(baseline)) if baseline is not None else None
    matched = matched_fid(synthetic.features, real.features)
    matched_mean = float(np.mean(matched[0])) if matched is not None else None
    ef_syn = {sid: f.ef for sid, f in synthetic.lv.items()}
    ef_real = {sid: f.ef for sid, f in real.lv.items()}
    fid_mean = float(np.mean(fid))
    return {
        "fid_depth": fid,
        "fid_mean": fid_mean,
        "fid_std": float(np.std(fid)),
        "fid_real_real_depth": baseline,
        "fid_real_real_mean": rr_mean,
        "fid_real_real_std": float(np.std(baseline)) if baseline is not None else None,
        "fid_matched_depth": matched[0] if matched is not None else None,
        "fid_matched_mean": matched_mean,
        "fid_matched_subjects": matched[1] if matched is not None else None,
        "fid_ratio": matched_mean / rr_mean if rr_mean and matched_mean is not None else None,
        "fid_ratio_method": "matched: synthetic-real at the real-real baseline's sizes "
        "(N // 2 subjects per side), averaged over the two real halves",
        "fid_samples": "per frame: each frame of slice z is one sample at depth z",
        "ef_synthetic": {k: _finite(v) for k, v in ef_syn.items()},
        "ef_real": {k: _finite(v) for k, v in ef_real.items()},
        "ef_real_source": {sid: f.source for sid, f in real.lv.items()},
        "ef_w1": _finite(ef_wasserstein(list(ef_syn.values()), list(ef_real.values()))),
        "ef_synthetic_mean": _mean(list(ef_syn.values())),
        "ef_synthetic_std": _std(list(ef_syn.values())),
        "ef_real_std": _std(list(ef_real.values())),
        "ef_std_ratio": _ratio(_std(list(ef_syn.values())), _std(list(ef_real.values()))),
        "ef_synthetic_found": sum(math.isfinite(v) for v in ef_syn.values()),
        "ef_real_mean": _mean(list(ef_real.values())),
        "smoothness_synthetic_mean": _mean([f.smoothness for f in synthetic.lv.values()]),
        "smoothness_real_mean": _mean([f.smoothness for f in real.lv.values()]),
        "sharpness_synthetic_mean": _mean(list(synthetic.sharpness.values())),
        "sharpness_real_mean": _mean(list(real.sharpness.values())),
        "sharpness_ratio": _ratio(
            _mean(list(synthetic.sharpness.values())), _mean(list(real.sharpness.values()))
        ),
        "sharpness_method": f"per slice and frame, the {EDGE_PERCENTILE:g}th percentile of the "
        "in-plane gradient magnitude (intensity per mm), averaged; ratio synthetic / real",
        "lv_synthetic": {sid: f.to_json() for sid, f in synthetic.lv.items()},
        "lv_real": {sid: f.to_json() for sid, f in real.lv.items()},
        "segmenter_vs_truth": _segmenter_accuracy(real),
        "n_synthetic": len(synthetic.ids),
        "n_real": len(real.ids),
        "feature_network": {
            "path": str(feature_net.path),
            "sha256": feature_net.sha256,
            "dim": feature_net.dim,
        },
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _figures(synthetic: CohortAnalysis, real: CohortAnalysis, metrics: dict) -> dict[str, bytes]:
    def mid(shown: dict[str, tuple[np.ndarray, float]]) -> dict[str, np.ndarray]:
        return {sid: cine[:, :, cine.shape[2] // 2] for sid, (cine, _) in shown.items()}

    return {
        "montage_synthetic": report.plot_montage(mid(synthetic.shown), "synthetic, mid slice"),
        "montage_real": report.plot_montage(mid(real.shown), "real, mid slice"),
        "fid_depth": report.plot_fid_depth(metrics["fid_depth"], metrics["fid_real_real_depth"]),
        "volume_curves": report.plot_volume_curves(
            {s: f.curve_ml for s, f in real.lv.items()},
            {s: f.curve_ml for s, f in synthetic.lv.items()},
        ),
        "ef_histograms": report.plot_ef_histograms(
            [f.ef for f in real.lv.values()], [f.ef for f in synthetic.lv.values()]
        ),
    }


def evaluate_cohorts(
    synthetic_dir: str | Path,
    real_dir: str | Path,
    out_dir: str | Path,
    *,
    segmenter_dir: str | Path | None = None,
    cfg: Config | None = None,
    utility: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a synthetic cohort against a real one.

    Args:
        synthetic_dir, real_dir: cohort folders.
        out_dir: receives ``metrics.json``, ``report.html``, ``plots/`` (and ``segmenter/`` when
            none is given: one is then trained on the real cohort's labelled frames).
        segmenter_dir: a ``fedcmr4d train segmenter`` checkpoint folder.
        cfg: its ``evaluate`` section is used (defaults when None).
        utility: the ``utility`` table of :func:`fedcmr4d.evaluate.utility.run_utility`
            (arm -> scores), shown in the report and kept in ``metrics.json`` when given.

    Returns:
        The metrics, with ``report`` and ``metrics`` paths added.
    """
    cfg = cfg or Config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    synthetic_cohort, real_cohort = open_cohort(synthetic_dir), open_cohort(real_dir)
    seg_dir = _segmenter_dir(real_cohort, out, Path(segmenter_dir) if segmenter_dir else None, cfg)
    segmenter, _ = load_segmenter(seg_dir)
    feature_net = FeatureNetwork(cfg.evaluate.feature_weights_path or seg_dir)
    keep = cfg.evaluate.report_subjects
    synthetic = analyse_cohort(
        synthetic_cohort, segmenter, feature_net, keep=keep, use_labels=False
    )
    real = analyse_cohort(real_cohort, segmenter, feature_net, keep=keep, use_labels=True)
    metrics = build_metrics(synthetic, real, feature_net)
    metrics.update(
        synthetic_dir=str(synthetic_cohort.root),
        real_dir=str(real_cohort.root),
        segmenter=str(seg_dir),
    )
    if utility is not None:
        metrics["utility"] = dict(utility)
    metrics = _json_safe(metrics)
    gifs = {sid: report.cine_gif(cine, ms) for sid, (cine, ms) in synthetic.shown.items()}
    report_path = report.write_report(out, metrics, _figures(synthetic, real, metrics), gifs)
    atomic_write_json(out / "metrics.json", metrics)
    return {**metrics, "report": str(report_path), "metrics": str(out / "metrics.json")}
