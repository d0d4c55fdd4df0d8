"""Quality of a trained generator: FID across depth and EF W1 (issue 9, row 7).

Samples ``--subjects`` synthetic subjects from a stage-2 checkpoint (one-pass,
:func:`fedcmr4d.pipelines.generation.sample_cohort`) and evaluates them against the real cohort with
the evaluation API (:func:`fedcmr4d.evaluate.evaluate_cohorts`): FID across depth (synthetic vs
real, and real vs real from two halves of the real cohort as the floor the synthetic FID should
approach), and the 1-Wasserstein distance between the synthetic and real ejection-fraction
distributions (EF in %, from a segmenter). The segmenter (also the FID feature network) is the
``--segmenter`` checkpoint, or one trained on the real cohort's labels (``evaluate.*`` of the
checkpoint's config). The real cohort defaults to the one the checkpoint was trained on (its
training and held-out subjects together).

    python -m benchmarks.quality --checkpoint runs/cpu-small/diffusion --subjects 32
    python -m benchmarks.quality --quick      # a tiny trained run (benchmarks.tiny_run)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from benchmarks.tiny_run import build_tiny_run
from fedcmr4d.evaluate import evaluate_cohorts
from fedcmr4d.pipelines.generation import sample_cohort
from fedcmr4d.train.checkpoint import load_checkpoint

KEPT = (
    "fid_mean", "fid_std", "fid_depth", "fid_real_real_mean", "fid_matched_mean",
    "fid_matched_subjects", "fid_ratio", "ef_w1", "ef_synthetic_mean", "ef_real_mean",
    "ef_synthetic_std", "ef_real_std", "ef_std_ratio", "ef_synthetic_found", "n_synthetic",
    "n_real", "segmenter_vs_truth",
)  # fmt: skip


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def evaluate_checkpoint(
    checkpoint: Path,
    real: Path,
    out: Path,
    *,
    subjects: int,
    seed: int,
    segmenter: Path | None,
) -> dict[str, Any]:
    """Sample, evaluate, and return the kept metrics plus timings."""
    cfg = load_checkpoint(checkpoint).cfg
    start = time.perf_counter()
    sample_cohort(checkpoint, subjects, out / "synthetic", seed=seed)
    sample_s = time.perf_counter() - start
    metrics = evaluate_cohorts(
        out / "synthetic", real, out / "evaluation", segmenter_dir=segmenter, cfg=cfg
    )
    evaluate_s = time.perf_counter() - start - sample_s
    kept = {k: _round(metrics.get(k)) for k in KEPT}
    kept["feature_network_sha256"] = metrics["feature_network"]["sha256"][:12]
    kept["segmenter"] = metrics["segmenter"]
    kept["sample_s"] = round(sample_s, 1)
    kept["evaluate_s"] = round(evaluate_s, 1)
    kept["config"] = cfg.name
    return kept


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny trained run, no record")
    parser.add_argument("--checkpoint", type=Path, help="one-pass stage-2 checkpoint")
    parser.add_argument("--real", type=Path, help="real cohort (default: the checkpoint's data)")
    parser.add_argument("--segmenter", type=Path, help="segmenter checkpoint (default: train)")
    parser.add_argument("--subjects", type=int, default=None, help="synthetic subjects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep the cohort and report here")
    parser.add_argument("--tiny-run", type=Path, help="--quick: reuse/build the tiny run here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            run = build_tiny_run(args.tiny_run or Path(tmp) / "tiny")
            args.checkpoint = run.diffusion
            args.segmenter = args.segmenter or run.segmenter
            args.subjects = args.subjects or 2
        if args.checkpoint is None:
            parser.error("--checkpoint is required (or --quick)")
        subjects = args.subjects or 32
        real = args.real or Path(load_checkpoint(args.checkpoint).meta["data"])
        out = args.out or Path(tmp) / "quality"
        metrics = evaluate_checkpoint(
            args.checkpoint, real, out, subjects=subjects, seed=args.seed, segmenter=args.segmenter
        )
    result = {
        "benchmark": "quality",
        "checkpoint": str(args.checkpoint),
        "real": str(real),
        **metrics,
        "peak_rss_gib": round(peak_rss_gib(), 2),
        **context(),
    }
    emit(result)
    if args.quick or args.no_record:
        return
    command = f"python -m benchmarks.quality --checkpoint {args.checkpoint} --subjects {subjects}"
    command += f" --segmenter {args.segmenter}" if args.segmenter else ""
    command += f" --real {args.real}" if args.real else ""
    columns = [
        "config: checkpoint (machine)", "n_synthetic", "n_real", "fid_matched_mean",
        "fid_real_real_mean", "fid_matched_subjects", "fid_ratio", "ef_w1", "ef_synthetic_mean",
        "ef_real_mean", "ef_std_ratio", "feature_network_sha256", "torch", "date",
    ]  # fmt: skip
    key = f"{result['config']}: {args.checkpoint.name} ({result['machine']})"
    record("quality", key, columns, result, command)


if __name__ == "__main__":
    main()
