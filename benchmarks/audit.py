"""Memorization audit: distance throughput and scaling, and recall on planted near-copies.

Throughput (default): nearest-neighbour search of N synthetic representations against M real
ones on the default audit grid (4 slices x 32 x 32 x 16 frames, in-plane shift +-1 grid pixel,
i.e. 9 in-plane shifts x every cyclic frame shift). Representations are random normalised
arrays: the cost of the search does not depend on image content. Also times turning a stored
64 x 64 x 6 x 16 phantom subject into its representation (read + resample + normalise).
Synthetic counts 100, 1k and 10k (``--sizes``) are searched for real; the 10k x 10k figure
(10k synthetic against 10k train and 10k holdout) is extrapolated linearly from the measured
pairs per second (the search is a fixed amount of work per pair, done in blocks) and says so.

Recall (``--recall``): phantom train / holdout / fresh cohorts from disjoint seeds and
near-copies of training subjects (exact, noise 0.02, 2-voxel shift, rolled phase, gamma 1.1)
planted among the fresh ones; reports recall per kind, the false-flag rate on fresh subjects,
the threshold and the largest copy distance.

    python benchmarks/audit.py [--quick] [--recall] [--no-record] [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import context, emit, peak_rss_gib, record  # noqa: E402
from fedcmr4d.audit.controls import NEAR_COPY_KINDS, near_copy  # noqa: E402
from fedcmr4d.audit.distance import (  # noqa: E402
    coarse_candidates,
    exact_on_candidates,
    nearest,
)
from fedcmr4d.audit.features import AuditGrid, represent_subject  # noqa: E402
from fedcmr4d.audit.memorization import run_audit  # noqa: E402
from fedcmr4d.config import AuditConfig  # noqa: E402
from fedcmr4d.data.cohort import Subject, write_cohort_index, write_subject  # noqa: E402
from fedcmr4d.data.phantom import make_phantom_subject  # noqa: E402


def _random_reps(n: int, grid: AuditGrid, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    reps = torch.randn(n, grid.slices, grid.grid, grid.grid, grid.frames, generator=gen)
    reps = reps - reps.mean(dim=(1, 2, 3, 4), keepdim=True)
    return reps / reps.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def search_costs(n_synthetic: int, n_real: int, grid: AuditGrid) -> dict[str, float]:
    """Seconds of each stage of the search for ``n_synthetic`` queries vs ``n_real``."""
    synthetic, real = _random_reps(n_synthetic, grid, 0), _random_reps(n_real, grid, 1)
    nearest(synthetic[:8], real[:8], shift=grid.shift_grid)  # warm-up
    with torch.no_grad():
        coarse = _timed(lambda: coarse_candidates(synthetic, real, grid.candidates, 256))
        picks = coarse_candidates(synthetic, real, grid.candidates, 256)
        refine = _timed(lambda: exact_on_candidates(synthetic, real, picks, grid.shift_grid))
    return {"coarse_s": coarse, "refine_s": refine}


def representation_rate(grid: AuditGrid, count: int) -> float:
    """Subjects per second: read a stored 64^2 x 6 x 16 phantom and represent it."""
    from fedcmr4d.data.cohort import read_subject

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            write_subject(tmp, make_phantom_subject(f"p{i}", 500 + i))
        start = time.perf_counter()
        for i in range(count):
            represent_subject(read_subject(tmp, f"p{i}", with_labels=False), grid)
        return count / (time.perf_counter() - start)


def run_throughput(args: argparse.Namespace) -> None:
    grid = AuditGrid(fov_mm=64.0)  # default grid, 64 mm field: shift +-1 grid pixel
    n_real = 100 if args.quick else args.real
    exhaustive_queries = 10 if args.quick else 100
    synthetic = _random_reps(exhaustive_queries, grid, 0)
    real = _random_reps(n_real, grid, 1)
    nearest(synthetic[:8], real[:8], shift=grid.shift_grid)  # warm-up
    exhaustive_s = _timed(lambda: nearest(synthetic, real, shift=grid.shift_grid))
    exhaustive_rate = exhaustive_queries * n_real / exhaustive_s
    sizes = [100] if args.quick else sorted(args.sizes)
    costs = {n: search_costs(n, n_real, grid) for n in sizes}
    two_stage_rate = {n: n * n_real / (c["coarse_s"] + c["refine_s"]) for n, c in costs.items()}
    largest = costs[sizes[-1]]
    # 10k synthetic vs 10k train and vs 10k holdout: coarse scales with N x M, refine with N.
    scale_n, scale_m = 10_000 / sizes[-1], 10_000 / n_real
    two_stage_10k_h = 2 * (largest["coarse_s"] * scale_n * scale_m + largest["refine_s"] * scale_n)
    exhaustive_10k_h = 2 * 10_000 * 10_000 / exhaustive_rate
    subjects_per_s = representation_rate(grid, 5 if args.quick else 20)
    result = {
        "benchmark": "audit_throughput",
        **context(),
        "threads": torch.get_num_threads(),
        "grid": grid.as_dict(),
        "n_real": n_real,
        "exhaustive_pairs_per_s": round(exhaustive_rate, 1),
        **{f"two_stage_pairs_per_s_{n}": round(r, 1) for n, r in two_stage_rate.items()},
        **{f"coarse_s_{n}": round(c["coarse_s"], 2) for n, c in costs.items()},
        **{f"refine_s_{n}": round(c["refine_s"], 2) for n, c in costs.items()},
        "subjects_per_s_represent": round(subjects_per_s, 1),
        "extrapolated_10k_x_10k_two_stage_hours": round(two_stage_10k_h / 3600, 2),
        "extrapolated_10k_x_10k_exhaustive_hours": round(exhaustive_10k_h / 3600, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "load_avg": round(os.getloadavg()[0], 1),
    }
    emit(result)
    if not args.record:
        return
    columns = ["case", "pairs/s", "seconds", "threads", "load avg", "machine", "date"]
    command = "python benchmarks/audit.py"
    common = {
        "threads": result["threads"],
        "load avg": result["load_avg"],
        "machine": result["machine"],
        "date": result["date"],
    }
    record(
        "audit",
        f"exhaustive, {exhaustive_queries} synthetic x {n_real} real",
        columns,
        {"pairs/s": f"{exhaustive_rate:,.0f}", "seconds": f"{exhaustive_s:.1f}", **common},
        command,
    )
    for n, c in costs.items():
        record(
            "audit",
            f"two-stage (candidates {grid.candidates}), {n} synthetic x {n_real} real",
            columns,
            {
                "pairs/s": f"{two_stage_rate[n]:,.0f}",
                "seconds": f"{c['coarse_s']:.1f} coarse + {c['refine_s']:.1f} exact",
                **common,
            },
            command,
        )
    record(
        "audit",
        "10k synthetic x (10k train + 10k holdout), extrapolated",
        columns,
        {
            "pairs/s": "-",
            "seconds": f"two-stage ~{two_stage_10k_h / 3600:.2f} h; exhaustive "
            f"~{exhaustive_10k_h / 3600:.0f} h (linear extrapolation, not run)",
            **common,
        },
        command,
    )
    record(
        "audit",
        "read + represent one 64x64x6x16 subject",
        columns,
        {"pairs/s": f"{subjects_per_s:.1f} subjects/s", "seconds": "-", **common},
        command,
    )


def _write(out: Path, subjects: list[Subject], ids: list[str]) -> None:
    for subject in subjects:
        write_subject(out, subject)
    write_cohort_index(out, ids)


def run_recall(args: argparse.Namespace) -> None:
    n_train, n_holdout, n_fresh, per_kind = (
        (20, 10, 10, 1) if args.quick else (args.train, args.holdout, args.fresh, 5)
    )
    size = 64
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = 10_000 * args.seed
        train = [make_phantom_subject(f"t{i}", base + i, image_size=size) for i in range(n_train)]
        holdout = [
            make_phantom_subject(f"h{i}", base + 1000 + i, image_size=size)
            for i in range(n_holdout)
        ]
        synthetic = [
            make_phantom_subject(f"fresh{i}", base + 2000 + i, image_size=size)
            for i in range(n_fresh)
        ]
        kinds: dict[str, str] = {}
        sources = rng.choice(n_train, size=per_kind * len(NEAR_COPY_KINDS), replace=False)
        for n, index in enumerate(sources):
            kind = NEAR_COPY_KINDS[n % len(NEAR_COPY_KINDS)]
            source = train[int(index)]
            cine = near_copy(source.cine, kind, rng)
            copy = Subject(f"copy-{kind}-{n}", cine, source.affine, source.frame_ms)
            synthetic.append(copy)
            kinds[copy.subject_id] = kind
        _write(root / "train", train, [s.subject_id for s in train])
        _write(root / "holdout", holdout, [s.subject_id for s in holdout])
        _write(root / "synthetic", synthetic, [s.subject_id for s in synthetic])
        config = AuditConfig()
        start = time.perf_counter()
        audit = run_audit(
            root / "synthetic", [root / "train"], [root / "holdout"], root / "audit.json",
            config=config, site="bench", report=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        full = json.loads((root / "audit-full.json").read_text())  # the steward's copy
        detail, ids = full["site_details"]["bench"], full["site_answers"][0]["synthetic_ids"]
        audit["distances"] = {
            "holdout_to_train": detail["holdout_to_train"],
            "synthetic": [
                {"synthetic_id": i, "nearest_train": d}
                for i, d in zip(ids, detail["synthetic_to_train"], strict=True)
            ],
        }
    flagged = {f["synthetic_id"] for f in audit["flagged"]}
    distance = {r["synthetic_id"]: r["nearest_train"] for r in audit["distances"]["synthetic"]}
    recall = {
        kind: sum(1 for i, k in kinds.items() if k == kind and i in flagged) / per_kind
        for kind in NEAR_COPY_KINDS
    }
    fresh_flagged = sum(1 for i in flagged if i.startswith("fresh"))
    result = {
        "benchmark": "audit_recall",
        **context(),
        "train": n_train,
        "holdout": n_holdout,
        "fresh": n_fresh,
        "copies_per_kind": per_kind,
        "seed": args.seed,
        "recall": recall,
        "recall_all": sum(recall.values()) / len(recall),
        "false_flag_rate": fresh_flagged / n_fresh,
        "threshold": round(audit["threshold"], 5),
        "max_copy_distance": round(max(distance[i] for i in kinds), 5),
        "min_fresh_distance": round(
            min(d for i, d in distance.items() if i.startswith("fresh")), 5
        ),
        "dcr_share": round(audit["dcr_share"], 3),
        "seconds": round(seconds, 1),
        "load_avg": round(os.getloadavg()[0], 1),
    }
    if args.figure:
        _figure(audit, kinds, Path(args.figure))
    emit(result)
    if args.record:
        record(
            "memorization audit recall",
            f"{n_train} train / {n_holdout} holdout / {n_fresh} fresh + {per_kind} x 5 copies, "
            f"seed {args.seed}",
            [
                "case",
                "recall (all kinds)",
                "false-flag rate",
                "threshold",
                "max copy distance",
                "min fresh distance",
                "seconds",
                "load avg",
                "machine",
                "date",
            ],  # fmt: skip
            {
                "recall (all kinds)": f"{result['recall_all']:.2f}",
                "false-flag rate": f"{result['false_flag_rate']:.3f}",
                "threshold": result["threshold"],
                "max copy distance": result["max_copy_distance"],
                "min fresh distance": result["min_fresh_distance"],
                "seconds": result["seconds"],
                "load avg": result["load_avg"],
                "machine": result["machine"],
                "date": result["date"],
            },
            "python benchmarks/audit.py --recall --seed S [--train N --holdout N --fresh N]",
        )


def _figure(audit: dict[str, Any], kinds: dict[str, str], path: Path) -> None:
    """Histogram of nearest-training distances: holdout, fresh synthetic, planted copies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = audit["distances"]["synthetic"]
    copies = [r["nearest_train"] for r in rows if r["synthetic_id"] in kinds]
    fresh = [r["nearest_train"] for r in rows if r["synthetic_id"] not in kinds]
    holdout = audit["distances"]["holdout_to_train"]
    top = max(max(holdout), max(fresh)) * 1.05
    bins = np.linspace(0, top, 40).tolist()
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    ax.hist(holdout, bins=bins, alpha=0.6, label="real holdout -> train (sets the bar)")
    ax.hist(fresh, bins=bins, alpha=0.6, label="fresh subjects -> train")
    ax.hist(copies, bins=bins, alpha=0.9, label="planted near-copies -> train")
    ax.axvline(audit["threshold"], color="red", ls="--", label="threshold (tail p = alpha / N)")
    ax.set_xlabel("nearest training distance, 1 - max NCC")
    ax.set_ylabel("subjects")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; nothing recorded")
    parser.add_argument("--recall", action="store_true", help="recall on planted near-copies")
    parser.add_argument("--no-record", dest="record", action="store_false")
    parser.add_argument("--real", type=int, default=1000, help="real subjects (throughput)")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[100, 1000, 10_000],
        help="throughput: synthetic counts searched, comma-separated (default 100,1000,10000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="cohort seed (recall)")
    parser.add_argument("--train", type=int, default=40, help="recall: training subjects")
    parser.add_argument("--holdout", type=int, default=20, help="recall: holdout subjects")
    parser.add_argument("--fresh", type=int, default=40, help="recall: fresh subjects")
    parser.add_argument("--figure", help="recall: write a distance histogram PNG here")
    args = parser.parse_args()
    if args.quick:
        args.record = False
    run_recall(args) if args.recall else run_throughput(args)


if __name__ == "__main__":
    main()
