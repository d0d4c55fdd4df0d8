"""Per-subject datasets: item shapes, seeded draws, geometry errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedcmr4d.config import load_config
from fedcmr4d.data.datasets import LatentStackDataset, SliceDataset, augment_slices, load_cines
from fedcmr4d.errors import InputError


@pytest.mark.parametrize(("k", "z"), [(1, 6), (3, 6), (8, 6)])
def test_slice_dataset_items(k: int, z: int) -> None:
    cines = [np.random.rand(16, 16, z, 8).astype(np.float32) for _ in range(3)]
    ds = SliceDataset(cines, k, seed=1)
    item = ds[1]
    assert len(ds) == 3
    assert item.shape == (k, 1, 16, 16, 8)
    assert torch.equal(item, ds[1])  # same epoch, same draw
    slices = [torch.from_numpy(cines[1][:, :, i]) for i in range(z)]
    assert all(any(torch.equal(s[0], ref) for ref in slices) for s in item)


def _variants(one: torch.Tensor) -> list[torch.Tensor]:
    """Every mirror (none, x, y, both) of a (1, X, Y, T) slice at every cyclic frame shift."""
    mirrors = [one, one.flip(1), one.flip(2), one.flip([1, 2])]
    return [m.roll(r, dims=-1) for m in mirrors for r in range(one.shape[-1])]


def test_augmented_slices_are_mirrored_rolled_copies_and_vary() -> None:
    cines = [np.random.rand(12, 10, 4, 8).astype(np.float32) for _ in range(2)]
    plain, augmented = SliceDataset(cines, 3, seed=2), SliceDataset(cines, 3, seed=2, augment=True)
    items = [augmented[0] for _ in range(2)]
    assert torch.equal(items[0], items[1])  # same epoch, same draw
    slices = [torch.from_numpy(cines[0][:, :, z])[None] for z in range(4)]
    for s in items[0]:
        assert any(torch.equal(s, v) for ref in slices for v in _variants(ref))
    changed = 0
    for epoch in range(6):
        plain.epoch = augmented.epoch = epoch
        assert plain[0].shape == augmented[0].shape == (3, 1, 12, 10, 8)
        changed += int(not torch.equal(plain[0], augmented[0]))
    assert changed >= 4  # a draw keeps the slice as it is with probability 1/32
    one = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    draws = {
        augment_slices(one[None], np.random.default_rng(i))[0].sum(-1).flatten()[0].item()
        for i in range(40)
    }
    assert len(draws) == 4  # all four mirrors occur (the frame roll keeps each pixel's sum)


def test_only_the_autoencoder_augments() -> None:
    assert load_config("tiny", ["train.autoencoder.augment=true"]).train.autoencoder.augment
    with pytest.raises(Exception, match=r"train\.diffusion\.augment"):
        load_config("tiny", ["train.diffusion.augment=true"])


@pytest.mark.parametrize(("s", "k", "z"), [(6, 1, 6), (1, 2, 6), (3, 4, 8)])
def test_latent_stack_items(s: int, k: int, z: int) -> None:
    latents = [torch.randn(z, 8, 4, 4, 2) for _ in range(2)]
    ds = LatentStackDataset(latents, s, k)
    item = ds[0]
    assert item.shape == (k, s * 8, 4, 4, 2)
    starts = [
        i for i in range(z - s + 1) if torch.equal(item[0], latents[0][i : i + s].flatten(0, 1))
    ]
    assert starts, "a window must be s consecutive slices stacked on channels"


def test_latent_stack_validation() -> None:
    with pytest.raises(ValueError, match="stack_slices"):
        LatentStackDataset([torch.randn(6, 8, 4, 4, 2)], 0)
    with pytest.raises(ValueError, match=r"latents\[0\]"):
        LatentStackDataset([torch.randn(4, 8, 4, 4, 2)], 6)
    with pytest.raises(ValueError, match="slices_per_subject"):
        SliceDataset([np.zeros((4, 4, 2, 4), np.float32)], 0)


def test_load_cines_checks_geometry(tiny_cohort: Path) -> None:
    ids, cines = load_cines(tiny_cohort, None, image_size=32, frames=16)
    assert len(ids) == len(cines) == 4 and cines[0].shape == (32, 32, 6, 16)
    with pytest.raises(InputError, match=r"cine\.nii\.gz.*image_size=64"):
        load_cines(tiny_cohort, None, image_size=64, frames=16)
    with pytest.raises(InputError, match="nobody"):
        load_cines(tiny_cohort, ["nobody"], image_size=32, frames=16)
