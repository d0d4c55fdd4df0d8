"""Are phantom subjects from different seeds near-copies of each other? (issue 3, item 2)

The memorization audit flags synthetic subjects that sit unusually close to a training subject,
so the phantom cohort itself must not contain near-duplicates. For N phantom subjects this
computes every subject's nearest-neighbour distance to the others, and compares it with the
distance of a subject to itself plus Gaussian noise (sigma 0.02, about the phantom's own noise
level): a near-copy would look like the latter.

Distances on whole cines (X, Y, Z, T) as flat vectors:
  * normalised L2: ||a - b|| / sqrt((||a||^2 + ||b||^2) / 2)
  * 1 - Pearson correlation

Prints one JSON line; saves a histogram to docs/phantom-nn-distances.png, a gallery of subjects
to docs/phantom-subjects.png and records a row in docs/benchmarks.md (not with --quick).

    python -m benchmarks.phantom_distances            # 64 subjects
    python -m benchmarks.phantom_distances --quick    # 12 subjects, no files written
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from fedcmr4d.data.phantom import make_phantom_subject

DOCS = Path(__file__).resolve().parent.parent / "docs"
FIGURE = DOCS / "phantom-nn-distances.png"
GALLERY = DOCS / "phantom-subjects.png"
NOISE_SIGMA = 0.02


def pairwise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, N) normalised-L2 and (1 - correlation) distance matrices of (N, D) vectors."""
    sq = (vectors**2).sum(axis=1)
    gram = vectors @ vectors.T
    l2 = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0))
    l2 /= np.sqrt((sq[:, None] + sq[None, :]) / 2.0)
    centred = vectors - vectors.mean(axis=1, keepdims=True)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    corr = 1.0 - centred @ centred.T
    return l2, corr


def self_distances(vectors: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distances of each subject to itself plus N(0, sigma^2) noise, both measures."""
    l2, corr = [], []
    for v in vectors:
        noisy = v + rng.normal(0.0, NOISE_SIGMA, v.shape)
        pair_l2, pair_corr = pairwise(np.stack([v, noisy]))
        l2.append(pair_l2[0, 1])
        corr.append(pair_corr[0, 1])
    return np.array(l2), np.array(corr)


def nearest(matrix: np.ndarray) -> np.ndarray:
    off = matrix + np.diag(np.full(len(matrix), np.inf))
    return off.min(axis=1)


def plot(nn: dict[str, np.ndarray], selfd: dict[str, np.ndarray], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in zip(
        axes, ("l2", "corr"), ("normalised L2", "1 - correlation"), strict=True
    ):
        upper = max(nn[key].max(), selfd[key].max()) * 1.05
        bins = np.linspace(0.0, upper, 40)
        ax.hist(nn[key], bins=bins, alpha=0.7, label=f"nearest other subject (N={n})")
        ax.hist(selfd[key], bins=bins, alpha=0.7, label=f"itself + noise (sigma {NOISE_SIGMA})")
        ax.set_xlabel(label)
        ax.set_ylabel("subjects")
        ax.legend(fontsize=8)
    fig.suptitle("Phantom subjects are not near-copies: nearest-neighbour distances")
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def gallery(seed: int, n: int = 4) -> None:
    """ED / ES mid-ventricular slices, a basal and an apical slice, and labels of n subjects."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n, 5, figsize=(11, 2.3 * n))
    for row in range(n):
        subject = make_phantom_subject(f"p{row}", seed * 100_003 + row)
        assert subject.labels is not None
        ed, es = subject.meta["ed_frame"], subject.meta["es_frame"]
        panels = [
            (subject.cine[:, :, 2, ed], "gray", f"ED, slice 2 (vendor {subject.meta['vendor']})"),
            (subject.cine[:, :, 2, es], "gray", f"ES, slice 2 (EF {subject.meta['ef_true']:.2f})"),
            (subject.cine[:, :, 0, ed], "gray", "ED, basal slice 0"),
            (subject.cine[:, :, 4, ed], "gray", "ED, apical slice 4"),
            (subject.labels[:, :, 2, ed], "viridis", "labels ED: LV, myo, RV"),
        ]
        for ax, (image, cmap, title) in zip(axes[row], panels, strict=True):
            vmax = 3 if cmap == "viridis" else 1
            ax.imshow(image.T, cmap=cmap, vmin=0, vmax=vmax, origin="lower")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle("Analytic phantom subjects (64 x 64 x 6 x 16, 1 x 1 x 10 mm)")
    fig.tight_layout()
    fig.savefig(GALLERY, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(__doc__, "12 subjects, record nothing")
    parser.add_argument("--subjects", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = 12 if args.quick else args.subjects
    start = time.perf_counter()
    vectors = np.stack(
        [
            make_phantom_subject(f"p{i}", args.seed * 100_003 + i).cine.ravel().astype(np.float64)
            for i in range(n)
        ]
    )
    render_s = time.perf_counter() - start
    l2, corr = pairwise(vectors)
    nn = {"l2": nearest(l2), "corr": nearest(corr)}
    sl2, scorr = self_distances(vectors, np.random.default_rng(args.seed))
    selfd = {"l2": sl2, "corr": scorr}
    result = {
        "benchmark": "phantom_distances",
        "subjects": n,
        "shape": list(make_phantom_subject("p", 0).cine.shape),
        "nn_l2_min": round(float(nn["l2"].min()), 4),
        "nn_l2_median": round(float(np.median(nn["l2"])), 4),
        "self_l2_max": round(float(sl2.max()), 4),
        "nn_corr_min": round(float(nn["corr"].min()), 4),
        "nn_corr_median": round(float(np.median(nn["corr"])), 4),
        "self_corr_max": round(float(scorr.max()), 4),
        "min_nn_over_max_self_l2": round(float(nn["l2"].min() / sl2.max()), 2),
        "render_s_per_subject": round(render_s / n, 4),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        **context(),
    }
    emit(result)
    if args.quick or args.no_record:
        return
    plot(nn, selfd, n)
    gallery(args.seed)
    columns = [
        "subjects", "nn_l2_min", "nn_l2_median", "self_l2_max", "nn_corr_min",
        "nn_corr_median", "self_corr_max", "min_nn_over_max_self_l2", "machine", "date",
    ]  # fmt: skip
    record(
        "phantom_distances",
        str(n),
        columns,
        result,
        f"python -m benchmarks.phantom_distances --subjects {n}",
    )


if __name__ == "__main__":
    main()
