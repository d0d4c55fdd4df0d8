"""Evaluation on phantoms: segmenter EF vs truth, FID real-real vs degraded, timing.

Trains the evaluation segmenter on one phantom cohort, then runs ``evaluate_cohorts`` with a
second, disjoint phantom cohort standing in for "synthetic" (so FID / real-real should be about
1 and EF W1 small), and computes FID of the real cohort against blurred and noisy copies of
itself. Prints one JSON line; records a row in docs/benchmarks.md unless ``--quick``.

    python benchmarks/eval_phantom.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import context, emit, peak_rss_gib, record  # noqa: E402
from fedcmr4d.config import load_config  # noqa: E402
from fedcmr4d.data.cohort import open_cohort  # noqa: E402
from fedcmr4d.data.phantom import write_phantom_cohort  # noqa: E402
from fedcmr4d.evaluate import evaluate_cohorts  # noqa: E402
from fedcmr4d.evaluate.features import FeatureNetwork  # noqa: E402
from fedcmr4d.evaluate.fid import depth_moments, fid_across_depth  # noqa: E402
from fedcmr4d.evaluate.segmenter import train_segmenter  # noqa: E402


def _degraded_fid(net: FeatureNetwork, real: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    cines = [s.cine for s in open_cohort(real)]
    ref = depth_moments(np.stack([net.cine(c) for c in cines]))
    out = {}
    for name, fn in (
        ("blur1", lambda c: gaussian_filter(c, sigma=(1.0, 1.0, 0, 0))),
        ("noise0.1", lambda c: np.clip(c + rng.normal(0, 0.1, c.shape), 0, 1).astype(np.float32)),
    ):
        other = depth_moments(np.stack([net.cine(fn(c)) for c in cines]))
        out[f"fid_{name}"] = float(np.mean(fid_across_depth(ref, other)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, no docs row")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/eval-phantom")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--features", default="8,8,16,32,64,8", help="segmenter widths")
    args = parser.parse_args()
    size, steps, n_train, n_eval = (32, 20, 4, 6) if args.quick else (args.size, args.steps, 16, 20)
    overrides = [
        f"evaluate.segmenter_steps={steps}",
        f"evaluate.segmenter_batch_size={args.batch}",
        f"evaluate.segmenter_features=[{args.features}]",
    ]
    cfg = load_config("cpu-small", overrides)
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else Path("runs/eval-phantom"))
    started = time.monotonic()
    write_phantom_cohort(out / "train", n_train, seed=11, image_size=size)
    write_phantom_cohort(out / "real", n_eval, seed=12, image_size=size)
    write_phantom_cohort(out / "other", n_eval, seed=13, image_size=size)
    t0 = time.monotonic()
    train_segmenter(open_cohort(out / "train"), out / "segmenter", cfg)
    train_s = time.monotonic() - t0
    t0 = time.monotonic()
    metrics = evaluate_cohorts(
        out / "other", out / "real", out / "evaluation", segmenter_dir=out / "segmenter", cfg=cfg
    )
    eval_s = time.monotonic() - t0
    degraded = _degraded_fid(FeatureNetwork(out / "segmenter"), out / "real")
    acc = metrics["segmenter_vs_truth"] or {}
    result = {
        **context(),
        "image_size": size,
        "segmenter_steps": steps,
        "n_train": n_train,
        "n_eval": n_eval,
        "ef_within_5": acc.get("share_within_5"),
        "ef_mae": acc.get("mean_abs_error"),
        "ef_max_abs_error": acc.get("max_abs_error"),
        "fid_other_vs_real": metrics["fid_mean"],
        "fid_real_real": metrics["fid_real_real_mean"],
        **degraded,
        "ef_w1": metrics["ef_w1"],
        "train_s": round(train_s, 1),
        "evaluate_s": round(eval_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "report": metrics["report"],
    }
    emit(result)
    if not args.quick:
        columns = [
            "run",
            "machine",
            "ef_within_5",
            "ef_mae",
            "fid_other_vs_real",
            "fid_real_real",
            "fid_blur1",
            "fid_noise0.1",
            "ef_w1",
            "train_s",
            "evaluate_s",
            "peak_rss_gib",
        ]
        row = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in result.items()}
        key = f"{size}px, {n_train} train / {n_eval}+{n_eval} eval, {steps} x {args.batch} frames"
        record("eval_phantom", key, columns, row, "python benchmarks/eval_phantom.py")


if __name__ == "__main__":
    main()
