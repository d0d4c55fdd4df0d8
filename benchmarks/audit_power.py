"""Power of the copy test: pass rate of fresh cohorts and recall of near-copies by holdout size.

A pool of phantom subjects (disjoint seeds from ``--pool-seed``) is represented once on the
default audit grid and every (query variant, reference) distance is computed once (exhaustive
search, flips and rotations included; the NCC is taken over the overlap of each in-plane shift,
so a zero-filled shifted copy is at ~0: ``fedcmr4d.audit.distance``). Each repetition then
draws, without replacement, 20 training subjects, n holdout subjects (n = 5, 10, 20, 40) and 12
fresh synthetic subjects that never trained, and runs the copy test of
``fedcmr4d.audit.memorization``: the calibration sample is the holdout-to-train nearest
distances plus each training subject's leave-one-out nearest distance to the other training
subjects (n + 20 values); a Weibull model of it (``log d`` minimum-Gumbel, p-value exact for
Weibull data at any sample size) gives each synthetic subject's tail p-value, flagged below
``copy_alpha / 12`` (Bonferroni, ``copy_alpha`` = 0.05):

- ``fresh pass rate``: repetitions in which no fresh subject is flagged (the audit's false-alarm
  side; the target is >= 0.95 at 10 holdout subjects);
- ``copy recall``: near-copies (every kind of ``fedcmr4d.audit.controls``) of that repetition's
  training subjects, each tested as one more synthetic subject, that are flagged.

Rows are keyed by holdout size; a pool other than the default one (seeds 5000+) is recorded
under its own rows.

    python benchmarks/audit_power.py [--quick] [--no-record] [--repeats 500] [--pool-seed 5000]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import benchmark_parser, context, emit, record  # noqa: E402
from fedcmr4d.audit.controls import NEAR_COPY_KINDS, near_copy  # noqa: E402
from fedcmr4d.audit.distance import nearest  # noqa: E402
from fedcmr4d.audit.features import represent_cine, variants  # noqa: E402
from fedcmr4d.audit.memorization import (  # noqa: E402
    calibration_distances,
    grid_from_config,
    tail_p_values,
)  # noqa: E402
from fedcmr4d.config import AuditConfig  # noqa: E402
from fedcmr4d.data.phantom import make_phantom_subject  # noqa: E402

SIZE, SLICES, FRAMES = 32, 6, 16
N_TRAIN, N_FRESH = 20, 12
POOL_SEED = 5000


def distance_matrix(queries: torch.Tensor, pool: torch.Tensor, grid: object) -> np.ndarray:
    """(Q, P) min over query variants of 1 - max NCC to every pool subject."""
    var = variants(queries, grid)  # type: ignore[arg-type]
    q, v = var.shape[:2]
    flat = var.reshape(q * v, *var.shape[2:])
    rows = []
    for r in range(pool.shape[0]):
        found = nearest(flat, pool[r : r + 1], shift=grid.shift_grid, candidates=0)  # type: ignore[attr-defined]
        rows.append(found.distance.reshape(q, v).amin(dim=1).numpy())
    return np.stack(rows, axis=1)


def main() -> None:
    parser = benchmark_parser(__doc__, "a small pool and few repeats (CI smoke run)")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--pool-seed", type=int, default=POOL_SEED, help="first phantom seed")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    sizes = [5, 10] if args.quick else [5, 10, 20, 40]
    repeats = 20 if args.quick else args.repeats
    pool_size = N_TRAIN + max(sizes) + N_FRESH
    config = AuditConfig()
    grid = grid_from_config(config, float(SIZE))
    started = time.monotonic()
    subjects = [
        make_phantom_subject(
            f"p{i}", args.pool_seed + i, image_size=SIZE, slices=SLICES, frames=FRAMES
        )
        for i in range(pool_size)
    ]
    reps = torch.from_numpy(np.stack([represent_cine(s.cine, (1.0, 1.0), grid) for s in subjects]))
    rng = np.random.default_rng(0)
    copies, sources, kinds = [], [], []
    for i, subject in enumerate(subjects):
        kind = NEAR_COPY_KINDS[i % len(NEAR_COPY_KINDS)]
        copies.append(represent_cine(near_copy(subject.cine, kind, rng), (1.0, 1.0), grid))
        sources.append(i)
        kinds.append(kind)
    pool_d = distance_matrix(reps, reps, grid)
    np.fill_diagonal(pool_d, np.inf)  # a subject is never its own reference
    copy_d = distance_matrix(torch.from_numpy(np.stack(copies)), reps, grid)
    setup_s = time.monotonic() - started
    pool_label = "" if args.pool_seed == POOL_SEED else f" (pool seeds {args.pool_seed}+)"
    for n_holdout in sizes:
        passes, caught, planted = 0, 0, 0
        for _ in range(repeats):
            order = rng.permutation(pool_size)
            train = order[:N_TRAIN]
            holdout = order[N_TRAIN : N_TRAIN + n_holdout]
            fresh = order[N_TRAIN + n_holdout : N_TRAIN + n_holdout + N_FRESH]
            holdout_d = pool_d[np.ix_(holdout, train)].min(axis=1)
            leave_one_out = pool_d[np.ix_(train, train)].min(axis=1)  # diagonal is inf
            reference = calibration_distances(holdout_d, leave_one_out)
            level = config.copy_alpha / N_FRESH
            fresh_p = tail_p_values(reference, pool_d[np.ix_(fresh, train)].min(axis=1))
            passes += int(not np.any(fresh_p < level))
            in_train = [c for c in range(len(copies)) if sources[c] in set(train.tolist())]
            copy_p = tail_p_values(reference, copy_d[np.ix_(in_train, train)].min(axis=1))
            caught += int(np.sum(copy_p < level))
            planted += len(in_train)
        result = {
            "holdout": n_holdout,
            "pool_seed": args.pool_seed,
            "repeats": repeats,
            "fresh_pass_rate": round(passes / repeats, 3),
            "copy_recall": round(caught / planted, 4),
            "copies_tested": planted,
            "copy_alpha": config.copy_alpha,
            "setup_s": round(setup_s, 1),
            **context(),
        }
        emit(result)
        if not args.quick and not args.no_record:
            record(
                "Audit power (copy test)",
                f"{n_holdout} holdout" + pool_label,
                [
                    "holdout",
                    "repeats",
                    "fresh_pass_rate",
                    "copy_recall",
                    "copies_tested",
                    "copy_alpha",
                    "machine",
                    "date",
                ],  # fmt: skip
                result,
                "python benchmarks/audit_power.py",
            )


if __name__ == "__main__":
    main()
