"""Which label route is more faithful: the 2D segmenter, or a label head on stage-1 latents.

On phantoms (ground truth for every frame), both routes are trained on the same labelled frames
of one cohort and scored on held-out phantoms:

(a) the evaluation segmenter (2D GroupNorm BasicUNet, :mod:`fedcmr4d.evaluate.segmenter`) on
    every frame of the cine;
(b) a small label decoder head on the frozen stage-1 latents: two transposed 3D convolutions
    from the (8, H/4, W/4, T/4) codes of each 2D+t slice to 4 classes at (H, W, T) — what a
    generator that emits labels jointly with the image would decode.

Scores: Dice per structure (LV, myocardium, RV) vs truth, EF absolute error vs ``ef_true``
(EF from the largest / smallest LV cavity volume of the predicted labels), and Dice of (b) vs (a)
on "synthetic-like" inputs: the stage-1 reconstructions of the held-out cines (images that went
through the generator's decoder, as sampled cines do). Stage 1 is the ``tiny`` config trained for
a few hundred steps: the comparison is between routes at the same (small) budget.

    OMP_NUM_THREADS=1 python -m benchmarks.labels [--quick] [--no-record]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import benchmark_parser, context, emit, peak_rss_gib, record  # noqa: E402
from fedcmr4d.config import load_config  # noqa: E402
from fedcmr4d.data.datasets import cine_slices  # noqa: E402
from fedcmr4d.data.phantom import write_phantom_cohort  # noqa: E402
from fedcmr4d.evaluate.lv import ejection_fraction, lv_volume_curve  # noqa: E402
from fedcmr4d.evaluate.segmenter import (  # noqa: E402
    fit_segmenter,
    labelled_frames,
    segment_cine,
    segmentation_loss,
)
from fedcmr4d.evaluate.utility import dice_per_structure  # noqa: E402
from fedcmr4d.stages.diffusion import load_frozen_autoencoder  # noqa: E402
from fedcmr4d.train.checkpoint import load_checkpoint  # noqa: E402
from fedcmr4d.train.local import train_local  # noqa: E402

STRUCTURES = ("lv", "myo", "rv")


class LatentLabelHead(nn.Module):
    """(N, D, h, w, t) stage-1 codes -> (N, 4, 4h, 4w, 4t) class logits.

    Two stride-2 transposed 3D convolutions (each doubles x, y and t), GroupNorm and SiLU between.
    """

    def __init__(self, latent_dim: int, hidden: int = 32, temporal_up: int = 4) -> None:
        super().__init__()
        st = 2 if temporal_up == 4 else 1
        kt = 4 if st == 2 else 3
        self.net = nn.Sequential(
            nn.ConvTranspose3d(latent_dim, hidden, (4, 4, kt), (2, 2, st), (1, 1, 1)),
            nn.GroupNorm(8, hidden),
            nn.SiLU(),
            nn.ConvTranspose3d(hidden, 4, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _head_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The segmenter's CE + soft Dice, on (N, 4, H, W, T) logits and (N, H, W, T) labels."""
    n, c, h, w, t = logits.shape
    flat = logits.permute(0, 4, 1, 2, 3).reshape(n * t, c, h, w)
    return segmentation_loss(flat, labels.permute(0, 3, 1, 2).reshape(n * t, h, w))


@torch.no_grad()
def _codes(model: Any, cine: np.ndarray) -> torch.Tensor:
    return model.encode_stage_2_inputs(cine_slices(cine).float())


def _label_slices(labels: np.ndarray) -> torch.Tensor:
    """(X, Y, Z, T) -> (Z, X, Y, T) int64."""
    return torch.from_numpy(np.ascontiguousarray(labels)).permute(2, 0, 1, 3).long()


def train_head(ae: Any, cohort: Any, steps: int, seed: int, lr: float = 3e-3) -> nn.Module:
    codes, targets = [], []
    for subject in cohort:
        codes.append(_codes(ae, subject.cine))
        targets.append(_label_slices(subject.labels))
    z, y = torch.cat(codes), torch.cat(targets)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = LatentLabelHead(z.shape[1], temporal_up=y.shape[-1] // z.shape[-1])
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        pick = torch.randint(0, z.shape[0], (8,), generator=gen)
        loss = _head_loss(head(z[pick]), y[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.eval()


@torch.no_grad()
def head_labels(head: nn.Module, ae: Any, cine: np.ndarray) -> np.ndarray:
    """(X, Y, Z, T) labels from the head on the cine's stage-1 codes."""
    pred = head(_codes(ae, cine)).argmax(dim=1)  # (Z, X, Y, T)
    return pred.permute(1, 2, 0, 3).numpy().astype(np.uint8)


@torch.no_grad()
def reconstruct(ae: Any, cine: np.ndarray) -> np.ndarray:
    out = ae.decode_stage_2_outputs(_codes(ae, cine), "nearest_code")  # (Z, 1, X, Y, T)
    return out[:, 0].clamp(0, 1).permute(1, 2, 0, 3).numpy().astype(np.float32)


def _ef(labels: np.ndarray, zooms: Any) -> float:
    curve = lv_volume_curve(labels, zooms)
    return ejection_fraction(float(curve.max()), float(curve.min()))


def _summary(rows: list[dict[str, float]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in rows[0]:
        values = [r[key] for r in rows if np.isfinite(r[key])]
        out[key] = round(float(np.mean(values)), 4) if values else None
    return out


def _scores(pred: np.ndarray, truth: np.ndarray, ef_true: float, zooms: Any) -> dict[str, float]:
    dice = dice_per_structure(pred, truth)
    ef = _ef(pred, zooms)
    return {
        **{f"dice_{k}": dice[k] for k in STRUCTURES},
        "ef_abs_error": abs(ef - ef_true) if np.isfinite(ef) else 100.0,
    }


def main() -> None:
    parser = benchmark_parser(__doc__, "small sizes and steps, never recorded")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ae-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300, help="segmenter and head steps")
    args = parser.parse_args()
    quick = args.quick
    n_train, n_test = (3, 2) if quick else (10, 6)
    ae_steps, steps = (4, 10) if quick else (args.ae_steps, args.steps)
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-labels-"))
    geo = {"image_size": 32, "slices": 6, "frames": 16}
    started = time.monotonic()
    train = write_phantom_cohort(out / "train", n_train, 41, id_prefix="train", **geo)
    test = write_phantom_cohort(out / "test", n_test, 42, id_prefix="test", **geo)
    cfg = load_config(
        "tiny",
        [
            f"train.autoencoder.steps={ae_steps}",
            "train.autoencoder.batch_size=4",
            "data.holdout_fraction=0",
            f"evaluate.segmenter_steps={steps}",
            "evaluate.segmenter_batch_size=16",
            "evaluate.segmenter_features=[8,8,16,32,64,8]",
        ],
    )
    t0 = time.monotonic()
    train_local("autoencoder", cfg, train.root, out / "autoencoder", progress=False)
    ae_s = time.monotonic() - t0
    ckpt = load_checkpoint(out / "autoencoder")
    ae = load_frozen_autoencoder(ckpt.cfg, ckpt.weights)
    t0 = time.monotonic()
    images, labels, _ = labelled_frames(train)
    segmenter, _ = fit_segmenter(images, labels, cfg)
    seg_s = time.monotonic() - t0
    t0 = time.monotonic()
    head = train_head(ae, train, steps, cfg.seed)
    head_s = time.monotonic() - t0
    rows: dict[str, list[dict[str, float]]] = {"segmenter": [], "latent_head": []}
    agreement: list[dict[str, float]] = []
    for subject in test:
        ef_true = 100.0 * float(subject.meta["ef_true"])
        a = segment_cine(segmenter, subject.cine)
        b = head_labels(head, ae, subject.cine)
        rows["segmenter"].append(_scores(a, subject.labels, ef_true, subject.zooms))
        rows["latent_head"].append(_scores(b, subject.labels, ef_true, subject.zooms))
        recon = reconstruct(ae, subject.cine)
        a_recon = segment_cine(segmenter, recon)
        dice = dice_per_structure(b, a_recon)  # head (b) vs segmenter (a) on the decoded cine
        agreement.append({f"dice_{k}": dice[k] for k in STRUCTURES})
    result: dict[str, Any] = {
        **context(),
        "n_train": n_train,
        "n_test": n_test,
        "image_size": 32,
        "autoencoder_steps": ae_steps,
        "label_steps": steps,
        "segmenter": _summary(rows["segmenter"]),
        "latent_head": _summary(rows["latent_head"]),
        "head_vs_segmenter_on_reconstructions": _summary(agreement),
        "autoencoder_s": round(ae_s, 1),
        "segmenter_s": round(seg_s, 1),
        "head_s": round(head_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }
    emit(result)
    if quick or args.no_record:
        return
    columns = ["route", "machine", "dice_lv", "dice_myo", "dice_rv", "ef_mae", "train_s", "setup"]
    setup = (
        f"32px phantoms, {n_train} train / {n_test} test, tiny stage 1 {ae_steps} steps, "
        f"{steps} label steps"
    )
    for route, seconds in (("segmenter", seg_s), ("latent_head", head_s)):
        summary = result[route]
        row = {
            "machine": result["machine"],
            **{f"dice_{k}": summary[f"dice_{k}"] for k in STRUCTURES},
            "ef_mae": summary["ef_abs_error"],
            "train_s": round(seconds, 1),
            "setup": setup,
        }
        record("labels", route, columns, row, "OMP_NUM_THREADS=1 python -m benchmarks.labels")
    agree = result["head_vs_segmenter_on_reconstructions"]
    row = {
        "machine": result["machine"],
        **{f"dice_{k}": agree[f"dice_{k}"] for k in STRUCTURES},
        "ef_mae": "",
        "train_s": "",
        "setup": "Dice of the head vs the segmenter on stage-1 reconstructions of the test cines",
    }
    record(
        "labels", "head vs segmenter", columns, row, "OMP_NUM_THREADS=1 python -m benchmarks.labels"
    )


if __name__ == "__main__":
    main()
