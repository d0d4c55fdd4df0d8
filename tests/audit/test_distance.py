"""Shift-invariant NCC nearest neighbours against a brute-force loop."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from fedcmr4d.audit.distance import coarse_embedding, nearest
from fedcmr4d.audit.features import AuditGrid, represent_cohort
from fedcmr4d.data.cohort import open_cohort


def _normalised(n: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, 2, 6, 6, 5, generator=generator)
    x = x - x.mean(dim=(1, 2, 3, 4), keepdim=True)
    return x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)


def test_matches_brute_force_over_all_shifts():
    generator = torch.Generator().manual_seed(1)
    queries, refs = _normalised(4, generator), _normalised(5, generator)
    refs[2] = torch.roll(queries[1], shifts=(1, -1, 3), dims=(1, 2, 3))
    result = nearest(queries, refs, shift=1, block=2)
    expected = np.full(4, -np.inf)
    for i, j in itertools.product(range(4), range(5)):
        for dx, dy, tau in itertools.product((-1, 0, 1), (-1, 0, 1), range(5)):
            moved = torch.roll(refs[j], shifts=(dx, dy, tau), dims=(1, 2, 3))
            expected[i] = max(expected[i], float((queries[i] * moved).sum()))
    assert np.allclose(result.distance.numpy(), 1.0 - expected, atol=1e-5)
    assert result.distance[1] < 1e-5 and int(result.index[1]) == 2


def test_shift_beyond_the_search_is_not_found():
    generator = torch.Generator().manual_seed(2)
    queries = _normalised(1, generator)
    refs = torch.roll(queries, shifts=2, dims=2)
    assert float(nearest(queries, refs, shift=1).distance[0]) > 0.5
    assert float(nearest(queries, refs, shift=2).distance[0]) < 1e-5


def test_no_references_gives_infinite_distance():
    queries = _normalised(3, torch.Generator().manual_seed(3))
    result = nearest(queries, queries[:0], shift=1)
    assert torch.isinf(result.distance).all() and (result.index == -1).all()


def test_two_stage_search_finds_the_exhaustive_nearest_on_phantoms(cohorts: Any):
    grid = AuditGrid(fov_mm=32.0)
    _, train = represent_cohort(open_cohort(cohorts.train), grid)
    _, planted = represent_cohort(open_cohort(cohorts.planted), grid)
    exhaustive = nearest(planted, train, shift=grid.shift_grid)
    two_stage = nearest(planted, train, shift=grid.shift_grid, candidates=8)
    assert torch.equal(two_stage.index, exhaustive.index)
    assert torch.allclose(two_stage.distance, exhaustive.distance, atol=1e-5)  # float32 sums


def test_coarse_embedding_ignores_cyclic_shifts():
    reps = _normalised(3, torch.Generator().manual_seed(4))
    moved = torch.roll(reps, shifts=(1, 2, 3), dims=(2, 3, 4))
    assert torch.allclose(coarse_embedding(reps), coarse_embedding(moved), atol=1e-5)
