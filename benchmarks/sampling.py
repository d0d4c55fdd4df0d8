"""Sampling: one-pass 4D vs the slice-wise baseline; DDIM vs DDPM (issue 9, row 3).

1. **Time per subject**, one-pass (one (S * D, h, w, t) latent stack per subject, one reverse
   pass: :func:`fedcmr4d.pipelines.generation.sample_cohort`) vs slice-wise (S independent
   single-slice samples from a ``diffusion.stack_slices: 1`` model:
   :func:`~fedcmr4d.pipelines.generation.sample_slicewise`), with the same subjects per reverse pass
   (``--batch`` subjects; the slice-wise pass then holds ``--batch`` x S slices). Timed end to
   end (load, denoise, snap, decode, write) and for the reverse process alone.
2. **Inter-slice consistency** of the cohorts written, and of the real cohort for reference:
   - ``temporal``: Pearson correlation over time of neighbouring slices' mean intensity in a
     central disc (radius a quarter of the field of view, where the heart is): slices of one
     heart brighten and darken together as the blood pool fills and empties;
   - ``spatial``: Pearson correlation of neighbouring slices' images (10 mm apart), averaged
     over frames: the anatomy of one heart continues from slice to slice;
   - ``lv_area`` (with ``--segmenter``): Pearson correlation over time of neighbouring slices'
     segmented LV-cavity areas (slices where the LV area is flat or absent are skipped).
   Both are averaged over neighbouring pairs and subjects (pairs with a flat curve are skipped).
3. **DDIM vs DDPM** on the one-pass model: DDIM with the config's ``sample_steps`` and DDPM
   ancestral sampling over all ``diffusion.timesteps`` training steps (the model is trained with
   that many; the issue's "DDPM 1000" assumes a 1000-step model): time per subject and, when a
   feature network (``--segmenter``) is given, FID across depth (mean over depth) against the
   real cohort, with the real-real baseline (two halves of the real cohort).

    python -m benchmarks.sampling --checkpoint runs/cpu-small/diffusion \\
        --slicewise-checkpoint runs/cpu-small/diffusion-slicewise --segmenter DIR
    python -m benchmarks.sampling --quick      # a tiny trained run (benchmarks.tiny_run)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record
from benchmarks.tiny_run import build_tiny_run
from fedcmr4d.data.cohort import LABEL_LV, open_cohort
from fedcmr4d.evaluate.features import FeatureNetwork
from fedcmr4d.evaluate.fid import depth_moments, fid_across_depth
from fedcmr4d.evaluate.segmenter import load_segmenter, segment_cine
from fedcmr4d.pipelines.generation import (
    Generator4D,
    decode_subject,
    load_generator,
    sample_cohort,
    sample_latent_stacks,
    sample_slicewise,
)
from fedcmr4d.train.checkpoint import load_checkpoint


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two vectors; NaN when either is flat."""
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-12 else float("nan")


def central_disc(size: int) -> np.ndarray:
    """(size, size) boolean disc of radius size / 4 around the centre (the heart's region)."""
    centre = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size]
    return (xx - centre) ** 2 + (yy - centre) ** 2 <= (size / 4.0) ** 2


def lv_area_consistency(labels: np.ndarray) -> float:
    """Neighbouring-slice correlation of LV-cavity area curves of (X, Y, Z, T) labels."""
    areas = (labels == LABEL_LV).sum(axis=(0, 1)).astype(np.float64)  # (Z, T)
    return _nanmean([_pearson(areas[i], areas[i + 1]) for i in range(areas.shape[0] - 1)])


def slice_consistency(cine: np.ndarray) -> tuple[float, float]:
    """(temporal, spatial) neighbouring-slice correlation of one (X, Y, Z, T) cine (nanmean)."""
    x, _, z, t = cine.shape
    disc = central_disc(x)
    curves = cine[disc].mean(axis=0)  # (Z, T)
    temporal = [_pearson(curves[i], curves[i + 1]) for i in range(z - 1)]
    spatial = [
        _nanmean([_pearson(cine[..., i, f].ravel(), cine[..., i + 1, f].ravel()) for f in range(t)])
        for i in range(z - 1)
    ]
    return _nanmean(temporal), _nanmean(spatial)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def cohort_consistency(cohort_dir: Path, segmenter: Any | None = None) -> dict[str, Any]:
    """Mean neighbouring-slice correlations over a cohort's subjects (LV area: with a
    segmenter; real subjects are segmented too, so all cohorts are measured alike)."""
    cohort = open_cohort(cohort_dir)
    temporal, spatial, lv_area = [], [], []
    for subject_id in cohort.subject_ids:
        cine = cohort.load(subject_id, with_labels=False).cine
        t_corr, s_corr = slice_consistency(cine)
        temporal.append(t_corr)
        spatial.append(s_corr)
        if segmenter is not None:
            lv_area.append(lv_area_consistency(segment_cine(segmenter, cine)))
    return {
        "temporal_corr": _rounded(_nanmean(temporal)),
        "spatial_corr": _rounded(_nanmean(spatial)),
        "lv_area_corr": _rounded(_nanmean(lv_area)) if segmenter is not None else None,
        "subjects": len(temporal),
    }


def _rounded(value: float) -> float | None:
    """4-decimal value, or None where no pair varied (NaN is not JSON and reads as a figure)."""
    return round(value, 4) if np.isfinite(value) else None


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def denoise_seconds(checkpoint: Path, n_samples: int, batch: int, seed: int) -> float:
    """Seconds of the reverse process alone for ``n_samples`` stacks, ``batch`` per pass."""
    gen = load_generator(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    done = 0
    while done < n_samples:
        n = min(batch, n_samples - done)
        sample_latent_stacks(gen, n, generator)
        done += n
    return time.perf_counter() - start


def one_pass_vs_slicewise(
    checkpoint: Path,
    slicewise: Path,
    n_subjects: int,
    batch: int,
    out: Path,
    seed: int,
    segmenter: Any | None,
) -> dict[str, Any]:
    """Time per subject (end to end and denoise only) and consistency of both cohorts."""
    slices = load_checkpoint(checkpoint).cfg.data.slices
    one_s = _timed(
        lambda: sample_cohort(checkpoint, n_subjects, out / "one-pass", seed=seed, batch_size=batch)
    )
    sw_s = _timed(
        lambda: sample_slicewise(
            slicewise, n_subjects, out / "slicewise", seed=seed, batch_size=batch * slices
        )
    )
    one_dn = denoise_seconds(checkpoint, n_subjects, batch, seed)
    sw_dn = denoise_seconds(slicewise, n_subjects * slices, batch * slices, seed)
    return {
        "subjects": n_subjects,
        "subjects_per_pass": batch,
        "one_pass_s_per_subject": round(one_s / n_subjects, 4),
        "slicewise_s_per_subject": round(sw_s / n_subjects, 4),
        "ratio": round(sw_s / one_s, 2),
        "one_pass_denoise_s_per_subject": round(one_dn / n_subjects, 4),
        "slicewise_denoise_s_per_subject": round(sw_dn / n_subjects, 4),
        "denoise_ratio": round(sw_dn / one_dn, 2),
        "consistency_one_pass": cohort_consistency(out / "one-pass", segmenter),
        "consistency_slicewise": cohort_consistency(out / "slicewise", segmenter),
    }


def _sample_cines(gen: Generator4D, n: int, batch: int, seed: int) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    cines: list[np.ndarray] = []
    while len(cines) < n:
        latents = sample_latent_stacks(gen, min(batch, n - len(cines)), generator)
        cines += [decode_subject(gen, item) for item in latents]
    return cines


def ddim_vs_ddpm(
    checkpoint: Path,
    n_subjects: int,
    batch: int,
    seed: int,
    features: FeatureNetwork | None,
    real_features: np.ndarray | None,
) -> dict[str, Any]:
    """Time per subject (denoise + decode) and FID-across-depth mean of DDIM and DDPM."""
    out: dict[str, Any] = {}
    for sampler in ("ddim", "ddpm"):
        gen = load_generator(checkpoint)
        diffusion = gen.cfg.diffusion
        diffusion.sampler = sampler  # type: ignore[assignment]
        if sampler == "ddpm":
            diffusion.sample_steps = diffusion.timesteps
        start = time.perf_counter()
        cines = _sample_cines(gen, n_subjects, batch, seed)
        seconds = time.perf_counter() - start
        fid = None
        if features is not None and real_features is not None:
            synthetic = np.stack([features.cine(c) for c in cines])
            depth = fid_across_depth(depth_moments(synthetic), depth_moments(real_features))
            fid = round(float(np.mean(depth)), 3)
        out[sampler] = {
            "steps": diffusion.sample_steps,
            "s_per_subject": round(seconds / n_subjects, 4),
            "fid_mean": fid,
        }
    out["ddpm_over_ddim_time"] = round(
        out["ddpm"]["s_per_subject"] / out["ddim"]["s_per_subject"], 2
    )
    return out


def real_features_of(cohort_dir: Path, features: FeatureNetwork) -> np.ndarray:
    """(N, Z, T, D) per-frame features of a cohort."""
    cohort = open_cohort(cohort_dir)
    return np.stack(
        [features.cine(cohort.load(s, with_labels=False).cine) for s in cohort.subject_ids]
    )


def real_real_fid(real_features: np.ndarray) -> float | None:
    """FID-across-depth mean between alternate halves of the real cohort (None below 4)."""
    if real_features.shape[0] < 4:
        return None
    fid = fid_across_depth(depth_moments(real_features[0::2]), depth_moments(real_features[1::2]))
    return round(float(np.mean(fid)), 3)


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny trained run, no record")
    parser.add_argument("--checkpoint", type=Path, help="one-pass stage-2 checkpoint")
    parser.add_argument("--slicewise-checkpoint", type=Path, help="stack_slices: 1 checkpoint")
    parser.add_argument("--real", type=Path, help="real cohort (default: the checkpoint's data)")
    parser.add_argument("--segmenter", type=Path, help="feature network for FID (optional)")
    parser.add_argument("--subjects", type=int, default=None, help="subjects per measurement")
    parser.add_argument("--batch", type=int, default=4, help="subjects per reverse pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny-run", type=Path, help="--quick: reuse/build the tiny run here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            run = build_tiny_run(args.tiny_run or Path(tmp) / "tiny")
            args.checkpoint, args.slicewise_checkpoint = run.diffusion, run.slicewise
            args.segmenter = args.segmenter or run.segmenter
            args.subjects = args.subjects or 2
        if args.checkpoint is None or args.slicewise_checkpoint is None:
            parser.error("--checkpoint and --slicewise-checkpoint are required (or --quick)")
        subjects = args.subjects or 8
        real = args.real or Path(load_checkpoint(args.checkpoint).meta["data"])
        segmenter = load_segmenter(args.segmenter)[0] if args.segmenter else None
        compare = one_pass_vs_slicewise(
            args.checkpoint,
            args.slicewise_checkpoint,
            subjects,
            args.batch,
            Path(tmp),
            args.seed,
            segmenter,
        )
        features = FeatureNetwork(args.segmenter) if args.segmenter else None
        real_feats = real_features_of(real, features) if features else None
        samplers = ddim_vs_ddpm(
            args.checkpoint, subjects, args.batch, args.seed, features, real_feats
        )
        cfg = load_checkpoint(args.checkpoint).cfg  # --quick: the run's folder goes with tmp
    result = {
        "benchmark": "sampling",
        "config": cfg.name,
        "checkpoint": str(args.checkpoint),
        "slicewise_checkpoint": str(args.slicewise_checkpoint),
        "real": str(real),
        **compare,
        "consistency_real": cohort_consistency(real, segmenter),
        "samplers": samplers,
        "fid_real_real_mean": real_real_fid(real_feats) if real_feats is not None else None,
        "feature_network": str(args.segmenter) if args.segmenter else None,
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "torch_threads": torch.get_num_threads(),
        **context(),
    }
    emit(result)
    if args.quick or args.no_record:
        return
    _record(result, args)


def _record(result: dict[str, Any], args: argparse.Namespace) -> None:
    command = (
        f"python -m benchmarks.sampling --checkpoint {args.checkpoint} "
        f"--slicewise-checkpoint {args.slicewise_checkpoint} --subjects {result['subjects']} "
        f"--batch {args.batch}" + (f" --segmenter {args.segmenter}" if args.segmenter else "")
    )
    columns = [
        "config: one-pass vs slice-wise (machine)", "subjects", "one_pass_s_per_subject",
        "slicewise_s_per_subject",
        "ratio", "denoise_ratio", "temporal_corr one-pass / slice-wise / real",
        "spatial_corr one-pass / slice-wise / real", "lv_area_corr one-pass / slice-wise / real",
        "ddim_steps", "ddim_s_per_subject", "ddim_fid", "ddpm_steps", "ddpm_s_per_subject",
        "ddpm_fid", "fid_real_real", "torch", "date",
    ]  # fmt: skip
    c1, c2, c3 = (
        result["consistency_one_pass"],
        result["consistency_slicewise"],
        result["consistency_real"],
    )
    s = result["samplers"]
    row = {
        **result,
        "temporal_corr one-pass / slice-wise / real": " / ".join(
            str(c["temporal_corr"]) for c in (c1, c2, c3)
        ),
        "spatial_corr one-pass / slice-wise / real": " / ".join(
            str(c["spatial_corr"]) for c in (c1, c2, c3)
        ),
        "lv_area_corr one-pass / slice-wise / real": " / ".join(
            str(c["lv_area_corr"]) for c in (c1, c2, c3)
        ),
        "ddim_steps": s["ddim"]["steps"],
        "ddim_s_per_subject": s["ddim"]["s_per_subject"],
        "ddim_fid": s["ddim"]["fid_mean"],
        "ddpm_steps": s["ddpm"]["steps"],
        "ddpm_s_per_subject": s["ddpm"]["s_per_subject"],
        "ddpm_fid": s["ddpm"]["fid_mean"],
        "fid_real_real": result["fid_real_real_mean"],
    }
    pair = f"{Path(args.checkpoint).name} vs {Path(args.slicewise_checkpoint).name}"
    key = f"{result['config']}: {pair} ({result['machine']})"
    record("sampling", key, columns, row, command)


if __name__ == "__main__":
    main()
