"""Train on synthetic, test on real: the utility of a labelled synthetic cohort.

:func:`run_utility` trains the evaluation segmenter (:mod:`fedcmr4d.evaluate.segmenter`) three
times per seed with the same config and steps — on (a) the real training cohort's labelled frames,
(b) the synthetic cohort's labels, (c) both (pooled, or with a set share of real draws,
``evaluate.utility_real_share``) — and scores each on held-out real subjects (with
``evaluate.utility_seeds`` > 1, once per seed: the figures are means, with their spread and each
arm's gap to arm (a) paired by seed, since a single seed's ranking of the arms can flip):
Dice per structure (LV cavity, LV myocardium, RV) over the test subjects' labelled frames, and
the absolute error of the EF the segmenter implies (largest / smallest LV cavity volume over the
cycle) against the test subject's reference EF (``meta["ef_true"]`` for phantoms, else the
EF of its ED / ES labels).

In a federation the real arms (a) and (c) need real data and run at a site: the site runs
``fedcmr4d utility`` on its own cohorts and only the scores leave (docs/site.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.config import Config, EvaluateConfig
from fedcmr4d.data.cohort import (
    LABEL_LV,
    LABEL_MYO,
    LABEL_RV,
    LABEL_UNLABELLED,
    Cohort,
    open_cohort,
)
from fedcmr4d.errors import InputError
from fedcmr4d.evaluate import report
from fedcmr4d.evaluate.lv import ejection_fraction, labelled_ed_es, lv_volume_curve
from fedcmr4d.evaluate.segmenter import (
    fit_segmenter,
    labelled_frames,
    segment_cine,
)
from fedcmr4d.io import atomic_write_json
from fedcmr4d.pipelines.labelling import require_labels

ARMS = ("real", "synthetic", "real+synthetic")
STRUCTURES = {"lv": LABEL_LV, "myo": LABEL_MYO, "rv": LABEL_RV}


def dice_per_structure(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of each structure over the voxels ``truth`` labels (255 ignored).

    NaN for a structure absent from both prediction and truth.
    """
    valid = truth != LABEL_UNLABELLED
    out: dict[str, float] = {}
    for name, value in STRUCTURES.items():
        p = (predicted == value) & valid
        g = (truth == value) & valid
        denom = int(p.sum()) + int(g.sum())
        out[name] = float("nan") if denom == 0 else 2.0 * float((p & g).sum()) / denom
    return out


def reference_ef(subject_labels: np.ndarray | None, meta: dict[str, Any], zooms: Any) -> float:
    """The test subject's EF in %: the phantom's truth, else its ED / ES labels; NaN if neither."""
    if "ef_true" in meta:
        return 100.0 * float(meta["ef_true"])
    volumes = labelled_ed_es(subject_labels, meta, zooms)
    return float("nan") if volumes is None else ejection_fraction(*volumes)


def score(model: Any, test: Cohort) -> dict[str, Any]:
    """Mean Dice per structure over test subjects and the EF mean absolute error."""
    per_subject: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    ef_errors: list[float] = []
    for subject in test:
        if subject.labels is None:
            raise InputError(f"{test.root / subject.subject_id}: test subject has no labels")
        predicted = segment_cine(model, subject.cine)
        for name, value in dice_per_structure(predicted, subject.labels).items():
            if math.isfinite(value):
                per_subject[name].append(value)
        curve = lv_volume_curve(predicted, subject.zooms)
        ef_pred = ejection_fraction(float(curve.max()), float(curve.min()))
        ef_ref = reference_ef(subject.labels, subject.meta, subject.zooms)
        if math.isfinite(ef_ref):
            # A segmenter that finds no LV has no EF: count it as a 100-point miss, not a skip.
            ef_errors.append(abs(ef_pred - ef_ref) if math.isfinite(ef_pred) else 100.0)
    dice = {f"dice_{k}": float(np.mean(v)) if v else None for k, v in per_subject.items()}
    finite = [v for v in dice.values() if v is not None]
    return {
        **dice,
        "dice_mean": float(np.mean(finite)) if finite else None,
        "ef_mae": float(np.mean(ef_errors)) if ef_errors else None,
        "n_ef": len(ef_errors),
    }


def mixed_weights(n_real: int, n_synthetic: int, ev: EvaluateConfig) -> list[float] | None:
    """Per-frame draw weights of arm (c) (real frames first), or None to pool them evenly.

    With ``evaluate.utility_real_share`` = r, a draw is a real frame with probability r and a
    synthetic one with 1 - r, whatever the two counts are: arm (c) then sees the real frames
    about as often as arm (a) does when r is near 1, and the synthetic frames add variety.
    """
    share = ev.utility_real_share
    if share is None:
        return None
    return [share / n_real] * n_real + [(1.0 - share) / n_synthetic] * n_synthetic


SCORES = ("dice_lv", "dice_myo", "dice_rv", "dice_mean", "ef_mae")


def mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm's row from its per-seed scores (:func:`score` plus ``seed`` and ``final_loss``).

    Each figure is the mean over the seeds (None where no seed had it); ``dice_mean_sd`` is the
    sample standard deviation of the mean Dice (None for one seed); ``per_seed`` keeps the runs.
    """
    row: dict[str, Any] = {}
    for key in SCORES:
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = float(np.mean(values)) if values else None
    dice = [r["dice_mean"] for r in runs if r["dice_mean"] is not None]
    row["dice_mean_sd"] = float(np.std(dice, ddof=1)) if len(dice) > 1 else None
    row["n_ef"] = runs[0]["n_ef"]
    row["final_loss"] = float(np.mean([r["final_loss"] for r in runs]))
    row["per_seed"] = runs
    return row


def add_paired_gaps(utility: dict[str, Any]) -> None:
    """Add each arm's mean-Dice gap to arm (a), seed by seed, in place.

    The arms of one seed share the segmenter's initialisation and draw order, so the gap is
    paired: ``dice_mean_vs_real`` (its mean), per seed in ``per_seed``, and
    ``seeds_at_or_above_real`` (how many seeds the arm matched or beat arm (a) in).
    """
    real = {r["seed"]: r["dice_mean"] for r in utility["real"]["per_seed"]}
    for arm, row in utility.items():
        if arm == "real":
            continue
        gaps = []
        for run in row["per_seed"]:
            ref = real.get(run["seed"])
            gap = None if ref is None or run["dice_mean"] is None else run["dice_mean"] - ref
            run["dice_mean_vs_real"] = gap
            if gap is not None:
                gaps.append(gap)
        row["dice_mean_vs_real"] = float(np.mean(gaps)) if gaps else None
        row["seeds_at_or_above_real"] = sum(g >= 0 for g in gaps)


def run_utility(
    real_train_dir: str | Path,
    synthetic_dir: str | Path,
    real_test_dir: str | Path,
    out_dir: str | Path,
    *,
    cfg: Config | None = None,
) -> dict[str, Any]:
    """Train the three arms, score them, write ``metrics.json`` and ``report.html``.

    Returns:
        The metrics (``utility``: arm -> Dice / EF MAE / training counts; ``n_real_train``,
        ``n_synthetic``, ``n_real_test``; the segmenter settings), with ``report`` and
        ``metrics`` paths added.

    Raises:
        InputError: a cohort is unreadable, the synthetic or the real test cohort lacks labels
            (naming the first subject without ``labels.nii.gz``; checked before any training)
            or a real cohort has no labelled frames.
    """
    cfg = cfg or Config()
    out = Path(out_dir)
    real_train, synthetic, real_test = (
        open_cohort(real_train_dir),
        open_cohort(synthetic_dir),
        open_cohort(real_test_dir),
    )
    require_labels(synthetic)
    # Before any arm trains: a test subject without labels would otherwise stop the run only
    # when arm (a)'s first segmenter is scored.
    require_labels(
        real_test,
        remedy="every real test subject needs its reference labels (at ED/ES at least) to be "
        "scored",
    )
    real_frames = labelled_frames(real_train)
    synthetic_frames = labelled_frames(synthetic)
    data = {
        "real": real_frames,
        "synthetic": synthetic_frames,
        "real+synthetic": (
            real_frames[0] + synthetic_frames[0],
            real_frames[1] + synthetic_frames[1],
            real_frames[2] + synthetic_frames[2],
        ),
    }
    ev = cfg.evaluate
    n_real, n_synthetic = len(real_frames[0]), len(synthetic_frames[0])
    draws = {"real+synthetic": mixed_weights(n_real, n_synthetic, ev)}
    mixed_share = (
        ev.utility_real_share
        if ev.utility_real_share is not None
        else n_real / (n_real + n_synthetic)
    )
    real_share = {"real": 1.0, "synthetic": 0.0, "real+synthetic": mixed_share}
    seeds = [cfg.seed + k for k in range(ev.utility_seeds)]
    utility: dict[str, Any] = {}
    for arm in ARMS:
        images, labels, subjects = data[arm]
        runs = []
        for seed in seeds:
            seeded = cfg.model_copy(update={"seed": seed})
            model, final_loss = fit_segmenter(images, labels, seeded, weights=draws.get(arm))
            runs.append({"seed": seed, **score(model, real_test), "final_loss": final_loss})
        utility[arm] = {
            **mean_over_seeds(runs),
            "train_frames": len(images),
            "train_subjects": subjects,
            "real_share": real_share[arm],
        }
    add_paired_gaps(utility)
    metrics: dict[str, Any] = {
        "utility": utility,
        "n_real_train": len(real_train),
        "n_synthetic": len(synthetic),
        "n_real_test": len(real_test),
        "segmenter": {
            "steps": ev.segmenter_steps,
            "batch_size": ev.segmenter_batch_size,
            "lr": ev.segmenter_lr,
            "features": list(ev.segmenter_features),
            "seed": cfg.seed,
            "seeds": seeds,
            "utility_real_share": ev.utility_real_share,
        },
        "ef_reference": "meta ef_true where present, else EF of the ED/ES labels",
        "ef_predicted": "largest / smallest LV cavity volume of the segmenter's labels",
        "synthetic_labels": (synthetic.index.get("provenance") or {}).get("labels"),
        "real_train_dir": Path(real_train_dir).name,
        "synthetic_dir": Path(synthetic_dir).name,
        "real_test_dir": Path(real_test_dir).name,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = report.write_utility_report(out, metrics)
    atomic_write_json(out / "metrics.json", metrics)
    return {**metrics, "report": str(path), "metrics": str(out / "metrics.json")}
