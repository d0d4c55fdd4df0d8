"""2D LV / myocardium / RV segmenter for evaluation: build, train, save, load, segment.

A MONAI ``BasicUNet`` with GroupNorm (no BatchNorm, no buffers: safe to train on site data and
to train federated). It is trained on labelled frames only (real datasets label ED and ES; other
frames hold 255), then segments every frame of real and synthetic cines so that LV volume can be
followed over the cycle. Its encoder doubles as the default feature network for FID
(:mod:`fedcmr4d.evaluate.features`).

Frames are 2D images ``cine[:, :, z, t]`` of shape (X, Y); the network sees them as
(B, 1, X, Y), zero-padded to a multiple of 16 (four 2x poolings) and cropped back.

Checkpoint folder (DESIGN.md): ``segmenter.safetensors`` (weights; the architecture is also in
the file's own metadata, so the file alone is a usable feature network), ``config.yaml`` (the
resolved config) and ``meta.json`` (written last: a folder without it is not a checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from safetensors.torch import load_file, save_file

from fedcmr4d import __version__
from fedcmr4d.config import Config
from fedcmr4d.data.cohort import LABEL_UNLABELLED, Cohort
from fedcmr4d.devices import resolve_device
from fedcmr4d.errors import InputError
from fedcmr4d.io import atomic_write, atomic_write_json, atomic_write_text, read_json_object
from fedcmr4d.train.optimizers import fused_adam

NUM_CLASSES = 4  # background, LV cavity, LV myocardium, RV
WEIGHTS_FILE = "segmenter.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
KIND = "fedcmr4d-segmenter"
_MULTIPLE = 16


def build_segmenter(*, features: list[int] | tuple[int, ...]) -> BasicUNet:
    """A 2D BasicUNet, 1 input channel, 4 classes, GroupNorm.

    Args:
        features: six channel counts (four encoder levels, bottleneck, last decoder level), as
            MONAI's ``BasicUNet`` takes them.
    """
    features = tuple(int(f) for f in features)
    if len(features) != 6 or min(features) < 1:
        raise ValueError(f"features must be six positive channel counts, got {features}")
    groups = math.gcd(*features)
    groups = max(g for g in range(1, min(groups, 8) + 1) if groups % g == 0)
    return BasicUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=NUM_CLASSES,
        features=features,
        norm=("group", {"num_groups": groups}),
    )


def pad_to_multiple(batch: torch.Tensor, value: float) -> torch.Tensor:
    """Pad the last two axes of (B, ..., H, W) at the end up to multiples of 16."""
    h, w = batch.shape[-2:]
    ph, pw = (-h) % _MULTIPLE, (-w) % _MULTIPLE
    if ph == 0 and pw == 0:
        return batch
    return F.pad(batch, (0, pw, 0, ph), value=value)


def labelled_frames(cohort: Cohort) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Every frame of the cohort that carries labels.

    Returns:
        images: list of (X, Y) float32 frames; labels: list of (X, Y) int64 maps with 255 where
        a pixel is unlabelled; and the number of subjects that contributed.
    """
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    contributing = 0
    for subject_id in cohort.subject_ids:
        subject = cohort.load(subject_id)
        if subject.labels is None:
            continue
        before = len(images)
        _, _, depth, frames = subject.cine.shape
        for z in range(depth):
            for t in range(frames):
                label = subject.labels[:, :, z, t]
                if np.all(label == LABEL_UNLABELLED):
                    continue
                images.append(subject.cine[:, :, z, t].astype(np.float32))
                labels.append(label.astype(np.int64))
        contributing += len(images) > before
    if not images:
        raise InputError(
            f"{cohort.root}: no labelled frames (labels.nii.gz missing or all 255); the segmenter "
            "needs a cohort with labels at ED/ES at least"
        )
    return images, labels, contributing


def _stack(frames: list[np.ndarray], fill: float) -> torch.Tensor:
    """(B, H, W) tensor of frames of possibly different sizes, padded at the end with ``fill``."""
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    out = np.full((len(frames), h, w), fill, dtype=frames[0].dtype)
    for i, frame in enumerate(frames):
        out[i, : frame.shape[0], : frame.shape[1]] = frame
    return torch.from_numpy(out)


def augment_frames(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> tuple:
    """Mild intensity (scale, gamma) and shift augmentation, so segmentation carries over to
    synthetic cines whose contrast differs a little; shapes (B, 1, H, W) and (B, H, W)."""
    b = images.shape[0]
    scale = 0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=gen)
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.6)
    images = (images.clamp(0, 1) ** gamma) * scale
    shift = torch.randint(-4, 5, (2,), generator=gen).tolist()
    images = torch.roll(images, shifts=shift, dims=(-2, -1))
    labels = torch.roll(labels, shifts=shift, dims=(-2, -1))
    return images, labels


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the three foreground classes, ignoring 255 pixels.

    Args:
        logits: (B, 4, H, W); labels: (B, H, W) int64 with 255 for unlabelled pixels.
    """
    ce = F.cross_entropy(logits, labels, ignore_index=LABEL_UNLABELLED)
    valid = (labels != LABEL_UNLABELLED).unsqueeze(1).float()
    # One-hot by comparison (F.one_hot has no vmap rule, and the DP step runs under vmap).
    classes = torch.arange(NUM_CLASSES, device=labels.device).view(1, -1, 1, 1)
    target = (labels.clamp(max=NUM_CLASSES - 1).unsqueeze(1) == classes).float()
    probs = logits.softmax(dim=1) * valid
    target = target * valid
    inter = (probs * target).sum(dim=(0, 2, 3))[1:]
    denom = (probs + target).sum(dim=(0, 2, 3))[1:]
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1 - dice).mean()


@dataclass
class TrainResult:
    """What :func:`train_segmenter` reports (also written to ``meta.json``)."""

    out_dir: Path
    steps: int
    final_loss: float
    train_frames: int
    train_subjects: int
    frame_shape: tuple[int, int] = (0, 0)


def _draw(n: int, batch: int, gen: torch.Generator, weights: list[float] | None) -> list[int]:
    """``batch`` frame indices in [0, n): uniform, or in proportion to ``weights``."""
    if weights is None:
        return torch.randint(0, n, (batch,), generator=gen).tolist()
    w = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(w, batch, replacement=True, generator=gen).tolist()


def fit_segmenter(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    cfg: Config,
    *,
    weights: list[float] | None = None,
) -> tuple[BasicUNet, float]:
    """Train a fresh segmenter on labelled frames; returns (model, mean of the last 20 losses).

    Uses ``cfg.evaluate`` (steps, batch size, lr, features), ``cfg.seed`` and
    ``cfg.train.device``: the same config and seed give the same draws of frames, so two runs on
    different data differ only by their data (``fedcmr4d utility`` relies on it).

    Args:
        weights: one non-negative weight per frame: frames are drawn (with replacement) in
            proportion to it; None draws every frame equally often.
    """
    ev = cfg.evaluate
    if not images or len(images) != len(labels):
        raise ValueError(f"need matching non-empty frames, got {len(images)} and {len(labels)}")
    if weights is not None and len(weights) != len(images):
        raise ValueError(f"need one weight per frame, got {len(weights)} for {len(images)}")
    device = resolve_device(cfg.train.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_segmenter(features=ev.segmenter_features).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=ev.segmenter_lr, fused=fused_adam(model.parameters())
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, ev.segmenter_steps)
    model.train()
    recent: list[float] = []
    for _ in range(ev.segmenter_steps):
        pick = _draw(len(images), ev.segmenter_batch_size, gen, weights)
        x = _stack([images[i] for i in pick], 0.0).unsqueeze(1)
        y = _stack([labels[i] for i in pick], LABEL_UNLABELLED)
        x, y = augment_frames(x, y, gen)
        x = pad_to_multiple(x, 0.0).to(device)
        y = pad_to_multiple(y, LABEL_UNLABELLED).to(device)
        loss = segmentation_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [float(loss.detach())])[-20:]
    model.eval()
    return model, float(np.mean(recent))


def train_segmenter(cohort: Cohort, out_dir: str | Path, cfg: Config) -> TrainResult:
    """Train on the cohort's labelled frames and save a checkpoint folder.

    Uses ``cfg.evaluate`` (steps, batch size, lr, features) and ``cfg.seed``.
    """
    ev = cfg.evaluate
    images, labels, subjects = labelled_frames(cohort)
    model, final_loss = fit_segmenter(images, labels, cfg)
    frame_shape = (max(f.shape[0] for f in images), max(f.shape[1] for f in images))
    result = TrainResult(
        Path(out_dir), ev.segmenter_steps, final_loss, len(images), subjects, frame_shape
    )
    save_segmenter(model, result.out_dir, cfg, _meta(result, cohort, ev.segmenter_features))
    return result


def _meta(result: TrainResult, cohort: Cohort | None, features: list[int]) -> dict[str, Any]:
    return {
        "stage": "segmenter",
        "kind": KIND,
        "features": list(features),
        "num_classes": NUM_CLASSES,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "train_frames": result.train_frames,
        "n_train_subjects": result.train_subjects,  # a count; ids stay with the cohort
        "frame_shape": list(result.frame_shape),  # the (X, Y) grid it was trained on
        # Trained without DP-SGD: labels made from it must not come from DP site data
        # (fedcmr4d.pipelines.labelling refuses that).
        "privacy": {"dp": False},
        "data": str(cohort.root) if cohort is not None else None,
        "code_version": __version__,
    }


def save_segmenter(model: BasicUNet, out_dir: Path, cfg: Config, meta: dict[str, Any]) -> None:
    """Write weights, config and (last) meta.json, each through a temporary name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"kind": KIND, "features": ",".join(str(f) for f in meta["features"])}
    atomic_write(
        out_dir / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata=header), mode=0o644
    )
    atomic_write_text(out_dir / CONFIG_FILE, cfg.to_yaml())
    atomic_write_json(out_dir / META_FILE, meta)


def weights_features(weights: Path) -> list[int]:
    """The architecture recorded in a segmenter weights file's own metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for bad files
        raise InputError(f"{weights}: not a readable safetensors file ({exc})") from None
    if header.get("kind") != KIND or "features" not in header:
        raise InputError(f"{weights}: not a fedcmr4d segmenter weights file (metadata {header})")
    return [int(f) for f in header["features"].split(",")]


def load_weights_file(weights: str | Path) -> BasicUNet:
    """A segmenter from one ``.safetensors`` file; the error names a missing file."""
    weights = Path(weights)
    if not weights.is_file():
        raise InputError(f"{weights}: segmenter / feature-network weights file is missing")
    model = build_segmenter(features=weights_features(weights))
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise InputError(
            f"{weights}: weights do not fit the recorded architecture ({exc})"
        ) from None
    model.eval()
    return model


def load_segmenter(checkpoint_dir: str | Path) -> tuple[BasicUNet, dict[str, Any]]:
    """Load a checkpoint folder written by :func:`train_segmenter`."""
    folder = Path(checkpoint_dir)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing; is {folder} a segmenter checkpoint folder?")
    meta = read_json_object(meta_path, "segmenter meta")
    if meta.get("kind") != KIND:
        raise InputError(f"{meta_path}: not a segmenter checkpoint (kind {meta.get('kind')!r})")
    return load_weights_file(folder / WEIGHTS_FILE), meta


@torch.no_grad()
def predict_frames(model: BasicUNet, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Segment a stack of 2D frames.

    Args:
        frames: (M, X, Y) float images in [0, 1].

    Returns:
        (M, X, Y) uint8 labels (0 bg, 1 LV, 2 myocardium, 3 RV).
    """
    model.eval()
    device = next(model.parameters()).device
    h, w = frames.shape[1:]
    out = np.empty(frames.shape, dtype=np.uint8)
    for start in range(0, frames.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size]))
        x = pad_to_multiple(x.float().unsqueeze(1), 0.0).to(device)
        pred = model(x).argmax(dim=1)[:, :h, :w]
        out[start : start + batch_size] = pred.cpu().numpy().astype(np.uint8)
    return out


def segment_cine(model: BasicUNet, cine: np.ndarray) -> np.ndarray:
    """Labels for every frame of a cine: (X, Y, Z, T) float -> (X, Y, Z, T) uint8."""
    x, y, z, t = cine.shape
    frames = np.moveaxis(cine, (2, 3), (0, 1)).reshape(z * t, x, y)
    labels = predict_frames(model, frames)
    return np.moveaxis(labels.reshape(z, t, x, y), (0, 1), (2, 3))
