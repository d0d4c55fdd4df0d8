"""Shift-invariant NCC nearest neighbours against a brute-force loop."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from fedcmr4d.audit.controls import near_copy
from fedcmr4d.audit.distance import EDGE_MARGIN, coarse_embedding, nearest
from fedcmr4d.audit.features import AuditGrid, represent_cine, represent_cohort
from fedcmr4d.data.cohort import open_cohort
from fedcmr4d.data.phantom import make_phantom_subject


def _normalised(n: int, generator: torch.Generator, size: int = 8) -> torch.Tensor:
    x = torch.randn(n, 2, size, size, 5, generator=generator)
    x = x - x.mean(dim=(1, 2, 3, 4), keepdim=True)
    return x / x.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)


def _overlap_ncc(query: torch.Tensor, ref: torch.Tensor, shift: int, margin: int) -> float:
    """Brute force: max over in-plane offsets and frame shifts of the Pearson correlation of
    the overlapping pixels of the two inner windows (``margin`` pixels off every edge)."""
    g = query.shape[1]
    q = query[:, margin : g - margin, margin : g - margin].double()
    r = ref[:, margin : g - margin, margin : g - margin].double()
    w, frames = q.shape[1], q.shape[3]
    best = -np.inf
    for dx, dy, tau in itertools.product(
        range(-shift, shift + 1), range(-shift, shift + 1), range(frames)
    ):
        qx, rx = slice(max(0, dx), w + min(0, dx)), slice(max(0, -dx), w - max(0, dx))
        qy, ry = slice(max(0, dy), w + min(0, dy)), slice(max(0, -dy), w - max(0, dy))
        a = torch.roll(q, shifts=tau, dims=3)[:, qx, qy].flatten()
        b = r[:, rx, ry].flatten()
        a, b = a - a.mean(), b - b.mean()
        best = max(best, float((a * b).sum() / (a.norm() * b.norm())))
    return best


def test_matches_brute_force_over_the_overlap_of_every_shift():
    generator = torch.Generator().manual_seed(1)
    queries, refs = _normalised(4, generator), _normalised(5, generator)
    refs[2] = torch.roll(queries[1], shifts=(1, -1, 3), dims=(1, 2, 3))
    result = nearest(queries, refs, shift=1, block=2)
    expected = np.full(4, -np.inf)
    for i, j in itertools.product(range(4), range(5)):
        value = _overlap_ncc(queries[i], refs[j], shift=1, margin=EDGE_MARGIN)
        expected[i] = max(expected[i], value)
    assert np.allclose(result.distance.numpy(), 1.0 - expected, atol=1e-5)
    assert result.distance[1] < 1e-5 and int(result.index[1]) == 2


def test_shift_beyond_the_search_is_not_found():
    generator = torch.Generator().manual_seed(2)
    queries = _normalised(1, generator)
    refs = torch.roll(queries, shifts=2, dims=2)
    assert float(nearest(queries, refs, shift=1).distance[0]) > 0.5
    assert float(nearest(queries, refs, shift=2).distance[0]) < 1e-5


def test_zero_filled_shift_copy_is_near_exact():
    """A cine moved by 2 voxels with a zero-filled border (the ``shift`` control) is at distance
    ~0 from its source: only the overlap is compared. (A cyclic comparison over the whole grid,
    the earlier distance, put this one at 0.0095 and others at ~0.02, the range of different
    subjects.)"""
    subject = make_phantom_subject("s", 42, image_size=32, slices=4, frames=8)
    grid = AuditGrid(fov_mm=32.0, frames=8)
    source = torch.from_numpy(represent_cine(subject.cine, (1.0, 1.0), grid))[None]
    moved = near_copy(subject.cine, "shift", np.random.default_rng(0))
    copy = torch.from_numpy(represent_cine(moved, (1.0, 1.0), grid))[None]
    assert grid.shift_grid == 2
    assert float(nearest(copy, source, shift=grid.shift_grid).distance[0]) < 1e-3
    other = make_phantom_subject("o", 43, image_size=32, slices=4, frames=8)
    other_rep = torch.from_numpy(represent_cine(other.cine, (1.0, 1.0), grid))[None]
    assert float(nearest(other_rep, source, shift=grid.shift_grid).distance[0]) > 0.01


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


def test_variant_search_in_chunks_equals_each_query_alone():
    from fedcmr4d.audit.distance import QUERIES_PER_CHUNK, nearest_over_variants

    gen = torch.Generator().manual_seed(3)
    n = 2 * QUERIES_PER_CHUNK + 3  # two full chunks and a partial one
    queries = _normalised(n * 3, gen).reshape(n, 3, *_normalised(1, gen).shape[1:])
    refs = _normalised(5, gen)
    chunked = nearest_over_variants(queries, refs, shift=1)
    alone = [nearest(queries[i], refs, shift=1).distance.min() for i in range(n)]
    assert chunked.shape == (n,)
    assert torch.allclose(chunked, torch.stack(alone))


def test_prepared_references_and_exclusion_equal_a_search_without_that_reference():
    """The leave-one-out search excludes the query's own entry from references prepared once;
    it must give what searching the cohort with that entry removed gives (both search modes)."""
    from fedcmr4d.audit.distance import nearest_over_variants, prepare

    generator = torch.Generator().manual_seed(5)
    refs = _normalised(12, generator)
    queries = torch.stack([refs[3], _normalised(1, generator)[0]]).unsqueeze(1)  # (2, V=1, ...)
    prepared = prepare(refs, 1)
    others = torch.cat([refs[:3], refs[4:]])
    for candidates in (0, 4):
        kept = nearest_over_variants(queries, prepared, shift=1, candidates=candidates, exclude=3)
        removed = nearest_over_variants(queries, others, shift=1, candidates=candidates)
        assert torch.equal(kept, removed)
        with_self = nearest_over_variants(queries, prepared, shift=1, candidates=candidates)
        assert float(with_self[0]) < 1e-6 < float(kept[0])  # its own copy is found, unless excluded
    found = nearest(refs[3:4], prepared, shift=1, exclude=3)
    assert int(found.index[0]) != 3  # indices stay those of the full reference set


def test_one_exclusion_per_query_equals_each_leave_one_out_search():
    """Many leave-one-out searches at once (an index per query) give each one's own result."""
    from fedcmr4d.audit.distance import nearest_over_variants, prepare

    generator = torch.Generator().manual_seed(9)
    refs = _normalised(10, generator)
    prepared = prepare(refs, 1)
    own = torch.tensor([3, 0, 9, 3])
    queries = torch.stack([refs[3], refs[0], refs[9], _normalised(1, generator)[0]])
    variants = torch.stack([queries, queries.flip(2)], dim=1)  # (4, V=2, ...)
    for candidates in (0, 4):
        batched = nearest_over_variants(
            variants, prepared, shift=1, candidates=candidates, exclude=own
        )
        each = [
            nearest_over_variants(
                variants[i : i + 1], prepared, shift=1, candidates=candidates, exclude=int(j)
            )[0]
            for i, j in enumerate(own)
        ]
        torch.testing.assert_close(batched, torch.stack(each))
        assert float(batched[:3].min()) > 1e-6  # no query found its own (excluded) copy
    with pytest.raises(ValueError, match="entries for"):
        nearest(queries, prepared, shift=1, exclude=own[:2])
    with pytest.raises(ValueError, match="must lie in"):
        nearest(queries, prepared, shift=1, exclude=torch.tensor([0, 1, 2, 10]))
