"""Torch datasets with ONE ITEM PER SUBJECT (the privacy unit of DP-SGD).

- :class:`SliceDataset` (stage 1): item = (k, 1, H, W, T), k random 2D+t slices of one subject.
- :class:`LatentStackDataset` (stage 2): item = (k, S * D, h, w, t), k windows of S consecutive
  slices' latents of one subject, stacked on channels.

Because an item holds all of one subject's samples for a step, a Poisson-sampling DP loader
samples subjects, and the per-sample gradient of an item is a per-subject gradient. The trainer
flattens (B, k, ...) to (B * k, ...) after loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fedcmr4d.data.cohort import CINE_FILE, open_cohort
from fedcmr4d.errors import InputError


def load_cines(
    cohort_dir: str | Path,
    subject_ids: Sequence[str] | None,
    *,
    image_size: int,
    frames: int,
) -> tuple[list[str], list[np.ndarray]]:
    """Read the (X, Y, Z, T) cines of ``subject_ids`` (default: all) and check their geometry.

    Raises:
        InputError: naming the subject's file when its in-plane size or frame count does not
            match the config, or when an id is not in the cohort.
    """
    cohort = open_cohort(cohort_dir)
    ids = list(cohort.subject_ids if subject_ids is None else subject_ids)
    if not ids:
        raise InputError(f"{cohort.root}: no training subjects")
    known = set(cohort.subject_ids)
    cines = []
    for subject_id in ids:
        if subject_id not in known:
            raise InputError(f"{cohort.root}: subject {subject_id!r} is not in cohort.json")
        cine = cohort.load(subject_id, with_labels=False).cine
        x, y, _, t = cine.shape
        if (x, y, t) != (image_size, image_size, frames):
            raise InputError(
                f"{cohort.root / subject_id / CINE_FILE}: shape {cine.shape} does not match "
                f"data.image_size={image_size}, data.frames={frames} (preprocess the cohort "
                "with the same config)"
            )
        cines.append(np.ascontiguousarray(cine, dtype=np.float32))
    return ids, cines


def cine_slices(cine: np.ndarray) -> Tensor:
    """(X, Y, Z, T) cine -> (Z, 1, X, Y, T) slice batch for the autoencoder."""
    return torch.from_numpy(np.ascontiguousarray(cine)).permute(2, 0, 1, 3).unsqueeze(1)


def augment_slices(slices: Tensor, rng: np.random.Generator) -> Tensor:
    """Mirror each (1, X, Y, T) slice along x and / or y and roll its frames cyclically.

    Each choice is drawn per slice: (k, 1, X, Y, T) -> same shape. A cine stays a cine (the
    cycle is periodic; a mirrored heart is a heart), so the autoencoder sees more anatomy
    without a change of contrast or timing it would have to learn.
    """
    out = []
    for one in slices:
        dims = [d for d, flip in ((1, rng.random() < 0.5), (2, rng.random() < 0.5)) if flip]
        if dims:
            one = one.flip(dims)
        out.append(one.roll(int(rng.integers(one.shape[-1])), dims=-1))
    return torch.stack(out)


class SliceDataset(Dataset[Tensor]):
    """Stage 1: k random 2D+t slices per subject.

    Args:
        cines: (X, Y, Z, T) arrays, one per subject.
        slices_per_subject: k, slices drawn per item (with replacement when k > Z).
        seed: base seed; item ``i`` of epoch ``e`` draws from ``seed, e, i`` so runs repeat.
        augment: pass each drawn slice through :func:`augment_slices`.
    """

    def __init__(
        self,
        cines: Sequence[np.ndarray],
        slices_per_subject: int,
        seed: int = 0,
        *,
        augment: bool = False,
    ):
        if slices_per_subject < 1:
            raise ValueError(f"slices_per_subject must be >= 1, got {slices_per_subject}")
        self.slices = [cine_slices(c) for c in cines]
        self.k = slices_per_subject
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> Tensor:
        slices = self.slices[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        z = slices.shape[0]
        picks = rng.choice(z, size=self.k, replace=self.k > z)
        drawn = slices[torch.from_numpy(picks)]
        return augment_slices(drawn, rng) if self.augment else drawn


class LatentStackDataset(Dataset[Tensor]):
    """Stage 2: k windows of S consecutive slice latents per subject.

    Args:
        latents: one (Z, D, h, w, t) tensor per subject (scaled, quantized codes).
        stack_slices: S, consecutive slices per window (6 for the seed, 1 for the slice-wise
            baseline).
        windows_per_subject: k, windows drawn per item.
        seed: base seed, as in :class:`SliceDataset`.

    Items: (k, S * D, h, w, t).
    """

    def __init__(
        self,
        latents: Sequence[Tensor],
        stack_slices: int,
        windows_per_subject: int = 1,
        seed: int = 0,
    ) -> None:
        if stack_slices < 1:
            raise ValueError(f"stack_slices must be >= 1, got {stack_slices}")
        if windows_per_subject < 1:
            raise ValueError(f"windows_per_subject must be >= 1, got {windows_per_subject}")
        for i, lat in enumerate(latents):
            if lat.ndim != 5 or lat.shape[0] < stack_slices:
                raise ValueError(
                    f"latents[{i}] must be (Z >= {stack_slices}, D, h, w, t), "
                    f"got {tuple(lat.shape)}"
                )
        self.latents = list(latents)
        self.s = stack_slices
        self.k = windows_per_subject
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> Tensor:
        lat = self.latents[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        starts = rng.integers(0, lat.shape[0] - self.s + 1, size=self.k)
        windows = [lat[int(s) : int(s) + self.s].flatten(0, 1) for s in starts]
        return torch.stack(windows)
