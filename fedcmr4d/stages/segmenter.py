"""The segmenter stage: the 2D LV / myocardium / RV segmenter trained on the sites' labelled frames.

The same network as ``fedcmr4d train segmenter`` (:mod:`fedcmr4d.evaluate.segmenter`: a MONAI
``BasicUNet`` with GroupNorm, ``evaluate.segmenter_features``, no buffers), trained through the
generic loop so that it can be averaged across sites like the two generator stages; the
coordinator saves the result as a segmenter checkpoint folder that labels synthetic cohorts.

Shape of a step: each training subject that has labelled frames (real datasets label ED and ES;
other frames hold 255) is one dataset item, (k, 2, X, Y): ``k = train.segmenter.
slices_per_subject`` labelled frames drawn per epoch, channel 0 the image, channel 1 the label
map (as float; 255 where unlabelled). The loss is cross-entropy plus soft Dice
(:func:`~fedcmr4d.evaluate.segmenter.segmentation_loss`) after a mild intensity/shift
augmentation.

Under DP (:meth:`SegmenterStage.dp_step`) the privacy unit is the subject, as in the generator
stages: each step Poisson-samples the site's TRAINING subjects (all of them, labelled or not, so
the sample rate is the one the site's ledger plans for every stage); a drawn subject without
labelled frames has no data in this stage and contributes nothing. Each drawn subject's loss on
its k frames is one row of ``torch.func.vmap``, clipped and noised by the site's DP optimizer. A
segmenter trained so labels a cohort sampled from a DP model (:mod:`fedcmr4d.pipelines.labelling`
refuses a non-DP one there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fedcmr4d.config import Config
from fedcmr4d.data.cohort import LABEL_UNLABELLED, open_cohort
from fedcmr4d.data.datasets import load_cines
from fedcmr4d.errors import InputError
from fedcmr4d.evaluate.segmenter import (
    augment_frames,
    build_segmenter,
    pad_to_multiple,
    segmentation_loss,
)
from fedcmr4d.stages import Stage
from fedcmr4d.stages.base import Runtime, StepOptimizers, flatten, mean_or_none, subjects_batch

if TYPE_CHECKING:
    from fedcmr4d.privacy.engine import SubjectDP

#: (images (M, X, Y) float32, labels (M, X, Y) int64) of one subject's labelled frames.
SubjectFrames = tuple[np.ndarray, np.ndarray]


def subject_frames(cine: np.ndarray, labels: np.ndarray) -> SubjectFrames | None:
    """The labelled frames of one (X, Y, Z, T) subject; None when it has none."""
    images, maps = [], []
    _, _, depth, frames = cine.shape
    for z in range(depth):
        for t in range(frames):
            label = labels[:, :, z, t]
            if np.all(label == LABEL_UNLABELLED):
                continue
            images.append(cine[:, :, z, t].astype(np.float32))
            maps.append(label.astype(np.int64))
    if not images:
        return None
    return np.stack(images), np.stack(maps)


def load_labelled_subjects(
    cohort_dir: str | Path,
    subject_ids: Sequence[str] | None,
    *,
    image_size: int,
    frames: int,
    required: bool = True,
) -> tuple[list[str], list[SubjectFrames]]:
    """The subjects among ``subject_ids`` that carry labelled frames, and those frames.

    Geometry is checked as for the other stages (:func:`~fedcmr4d.data.datasets.load_cines`).

    Raises:
        InputError: naming the cohort when none of the subjects has a labelled frame (unless
            ``required`` is false: then both lists are empty).
    """
    ids, cines = load_cines(cohort_dir, subject_ids, image_size=image_size, frames=frames)
    cohort = open_cohort(cohort_dir)
    kept_ids: list[str] = []
    kept: list[SubjectFrames] = []
    for subject_id, cine in zip(ids, cines, strict=True):
        labels = cohort.load(subject_id).labels
        part = None if labels is None else subject_frames(cine, labels)
        if part is not None:
            kept_ids.append(subject_id)
            kept.append(part)
    if not kept and required:
        raise InputError(
            f"{cohort.root}: none of the {len(ids)} subjects has labelled frames (labels.nii.gz "
            "missing or all 255); the segmenter stage needs labels at ED/ES at least"
        )
    return kept_ids, kept


class LabelledFrameDataset(Dataset[Tensor]):
    """One (k, 2, X, Y) item per subject: k of its labelled frames, redrawn per ``epoch``.

    Channel 0 is the image, channel 1 the label map as float (255 where unlabelled). A subject
    with fewer than k labelled frames repeats some.
    """

    def __init__(self, subjects: list[SubjectFrames], k: int, *, seed: int) -> None:
        self.subjects = subjects
        self.k = k
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> Tensor:
        images, labels = self.subjects[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        m = images.shape[0]
        pick = rng.choice(m, size=self.k, replace=m < self.k)
        item = np.stack([images[pick], labels[pick].astype(np.float32)], axis=1)
        return torch.from_numpy(np.ascontiguousarray(item))


def split_item(batch: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 2, X, Y) frames -> images (N, 1, X, Y) float and labels (N, X, Y) int64."""
    return batch[:, :1], batch[:, 1].round().long()


class SegmenterStage:
    """The segmenter at one site: a BasicUNet on the labelled frames of its training subjects.

    Args:
        cfg: resolved config (``evaluate.segmenter_features``, ``train.segmenter``).
        subjects: the labelled frames of each training subject
            (:func:`load_labelled_subjects`).
        runtime: device and precision.
    """

    stage: ClassVar[Stage] = Stage.SEGMENTER
    uses_ema: ClassVar[bool] = False

    def __init__(self, cfg: Config, subjects: list[SubjectFrames], runtime: Runtime) -> None:
        if not subjects:
            raise ValueError("the segmenter stage needs at least one subject with labelled frames")
        self.cfg = cfg
        # 2D frames: the runtime's channels-last-3d layout does not apply.
        self.runtime = Runtime(runtime.device, channels_last=False, bf16=runtime.bf16)
        k = cfg.train.segmenter.slices_per_subject
        self.dataset = LabelledFrameDataset(subjects, k, seed=cfg.seed)
        model = build_segmenter(features=cfg.evaluate.segmenter_features)
        self.models: dict[str, nn.Module] = {"segmenter": self.runtime.place(model)}
        self._generator: torch.Generator | None = None
        # DP only: position in ``dataset`` of each of the site's training subjects (None: that
        # subject has no labelled frame). Set by the trainer; the Poisson sample is over these.
        self.population_positions: list[int | None] = list(range(len(subjects)))

    @property
    def generator(self) -> torch.Generator:
        """Augmentation draws, seeded from torch's RNG at the first step (a site seeds it per
        round: :func:`fedcmr4d.federated.site.round_seed`)."""
        if self._generator is None:
            seed = int(torch.randint(0, 2**62, (1,)))
            self._generator = torch.Generator().manual_seed(seed)
        return self._generator

    def learning_rates(self) -> dict[str, float]:
        return {"segmenter": self.cfg.train.segmenter.lr}

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def loss(self, images: Tensor, labels: Tensor) -> Tensor:
        """Segmentation loss of (N, 1, X, Y) images against (N, X, Y) labels (padded to 16)."""
        x = pad_to_multiple(images, 0.0).to(self.runtime.device)
        y = pad_to_multiple(labels, LABEL_UNLABELLED).to(self.runtime.device)
        with self.runtime.autocast():
            return segmentation_loss(self.models["segmenter"](x).float(), y)

    def train_step(
        self, step: int, next_batch: Callable[[], Tensor], optim: StepOptimizers, accumulation: int
    ) -> dict[str, float]:
        total = 0.0
        for _ in range(accumulation):
            images, labels = split_item(flatten(next_batch()))
            images, labels = augment_frames(images, labels, self.generator)
            loss = self.loss(images, labels)
            (loss / accumulation).backward()
            total += float(loss.detach()) / accumulation
        optim.step("segmenter")
        return {"loss": total}

    def dp_step(self, step: int, engine: SubjectDP, optim: StepOptimizers) -> dict[str, float]:
        """One DP step on a Poisson sample of the site's training subjects.

        The batch is (B, k, 2, X, Y): B drawn subjects that have labelled frames, k frames each.
        The augmentation (intensity, shift) is drawn before the per-subject loss; it depends on
        no subject's data, so each subject's loss still depends on that subject alone.
        """
        self.set_epoch(step)  # fresh frame draws each step
        drawn = [self.population_positions[i] for i in engine.draw()]
        batch = subjects_batch(self.dataset, [p for p in drawn if p is not None], self.runtime)
        b, k = batch.shape[:2]
        images, labels = augment_frames(*split_item(batch.flatten(0, 1)), self.generator)
        frames = torch.cat([images, labels.unsqueeze(1).to(images.dtype)], dim=1)

        def subject_loss(item: Tensor) -> Tensor:  # (k, 2, X, Y): one subject's frames
            return self.loss(*split_item(item))

        losses, _ = engine.backward(
            self.models["segmenter"], subject_loss, frames.reshape(b, k, *frames.shape[1:])
        )
        optim.step("segmenter")
        mean = mean_or_none(losses)
        return {} if mean is None else {"loss": mean}

    @torch.no_grad()
    def evaluate_frames(self, subjects: list[SubjectFrames]) -> dict[str, float]:
        """Loss and mean foreground Dice on every labelled frame of held-out subjects."""
        if not subjects:
            return {"num-examples": 0.0}
        model = self.models["segmenter"]
        losses, dices = [], []
        for images, labels in subjects:
            x = torch.from_numpy(images).unsqueeze(1)
            y = torch.from_numpy(labels)
            losses.append(float(self.loss(x, y)))
            h, w = labels.shape[1:]
            padded = pad_to_multiple(x, 0.0).to(self.runtime.device)
            pred = model(padded).argmax(dim=1)[:, :h, :w].cpu()
            dices.append(foreground_dice(pred, y))
        return {
            "val_loss": float(np.mean(losses)),
            "val_dice": float(np.mean(dices)),
            "num-examples": float(len(subjects)),
        }

    def evaluate(self, cines: list[np.ndarray]) -> dict[str, float]:
        """Unlabelled cines carry nothing to score: see :meth:`evaluate_frames`."""
        return {"num-examples": 0.0}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"features": list(self.cfg.evaluate.segmenter_features)}


def foreground_dice(pred: Tensor, labels: Tensor) -> float:
    """Mean Dice over the three foreground classes present in ``labels`` (255 ignored)."""
    valid = labels != LABEL_UNLABELLED
    scores = []
    for cls in (1, 2, 3):
        truth = (labels == cls) & valid
        if not truth.any():
            continue
        guess = (pred == cls) & valid
        scores.append(float(2 * (truth & guess).sum() / (truth.sum() + guess.sum())))
    return float(np.mean(scores)) if scores else float("nan")
