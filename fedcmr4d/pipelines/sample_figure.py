"""Look at synthetic cines: frame strips of a few subjects, and a crude beat amplitude.

``fedcmr4d figure --synthetic DIR [--real DIR] --out PNG`` (:mod:`fedcmr4d.cli.figure`) draws, per
subject, one row of frames of its mid-ventricular slice (real subjects first, labelled), and
prints one JSON line with each subject's blood-pool area change over the cycle.

The blood-pool area of a slice at frame f is the number of pixels brighter than ``threshold``
inside the central half of the field of view (the phantom's and preprocessed cohorts' heart is
centred); ``(max - min) / max`` over frames, averaged over slices, is a label-free proxy for how
much the heart contracts -- 0 for a still image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.io import atomic_write


def pool_area_change(cine: np.ndarray, threshold: float = 0.5) -> float:
    """Mean over slices of (max - min) / max of the bright central area; cine (X, Y, Z, T)."""
    x, y = cine.shape[:2]
    centre = cine[x // 4 : x - x // 4, y // 4 : y - y // 4]
    areas = (centre > threshold).sum(axis=(0, 1)).astype(float)  # (Z, T)
    changes = [(a.max() - a.min()) / a.max() for a in areas if a.max() > 0]
    return float(np.mean(changes)) if changes else 0.0


def _rows(cohort_dir: Path, n: int, label: str) -> list[tuple[str, np.ndarray, float]]:
    cohort = open_cohort(cohort_dir)
    rows = []
    for subject_id in cohort.subject_ids[:n]:
        cine = cohort.load(subject_id, with_labels=False).cine
        rows.append((f"{label} {subject_id}", cine, pool_area_change(cine)))
    return rows


def plot_frames(
    synthetic: Path,
    out_png: Path,
    *,
    real: Path | None = None,
    n_subjects: int = 3,
    n_frames: int = 8,
    slice_index: int | None = None,
) -> dict[str, float]:
    """Write the frame-strip PNG; return subject -> pool area change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (_rows(real, 1, "real") if real else []) + _rows(synthetic, n_subjects, "synthetic")
    fig, axes = plt.subplots(len(rows), n_frames, figsize=(1.3 * n_frames, 1.45 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, (name, cine, change) in enumerate(rows):
        z = cine.shape[2] // 2 if slice_index is None else slice_index
        frames = np.linspace(0, cine.shape[3] - 1, n_frames).round().astype(int)
        for c, f in enumerate(frames):
            ax = axes[r, c]
            ax.imshow(cine[:, :, z, f].T, cmap="gray", vmin=0, vmax=1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={f}", fontsize=7)
        axes[r, 0].set_ylabel(f"{name}\nslice {z}, Δarea {change:.2f}", fontsize=6)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=110), mode=0o644)
    plt.close(fig)
    return {name: round(change, 3) for name, _, change in rows}
