"""Shift-invariant normalised cross-correlation between audit representations.

Two representations ``a`` and ``b`` of shape (S, G, G, T) (zero mean, unit norm; see
:mod:`fedcmr4d.audit.features`) are compared as

    ncc(a, b) = max over dx, dy in [-k, k] and every cyclic frame shift tau of
                sum a(z, x, y, t) * b(z, x + dx, y + dy, t + tau)

with cyclic indices, and ``distance = 1 - ncc`` (0 for a copy, about 1 for unrelated images).
Cyclic shifts keep the mean and the norm, so the value stays a true correlation coefficient.

All shifts come at once from FFTs over (x, y, t): the slice-summed product of the two spectra
is inverse transformed to the correlation at every cyclic (dx, dy, tau), and the maximum is
taken over |dx|, |dy| <= k and every tau. Cost per pair: S * G^2 * (T / 2 + 1) complex
multiplies plus one G x G x T inverse FFT, whatever k.

For large cohorts the search is two-stage (``candidates`` > 0): a coarse embedding that is
exactly invariant to cyclic frame shifts and nearly invariant to small in-plane shifts (temporal
amplitude spectra of 4 x 4 average-pooled representations, cosine similarity, one real matrix
product per block) picks each query's ``candidates`` most similar references, and only those
are scored with the exact shift search above. A near-copy is among the most similar references
by construction; for other subjects the reported distance can only be larger than or equal to
the exhaustive one (the true nearest may be missed); holdout and synthetic subjects go
through the same search, so their distances stay comparable. ``benchmarks/audit.py`` measures
how often the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Nearest:
    """Nearest-reference result for every query.

    Attributes:
        distance: (N_query,) float64, ``1 - max NCC`` to the nearest reference (``inf`` when
            there are no references).
        index: (N_query,) int64 index of that reference (-1 when there are none). Stays at the
            site that owns the references; only ``distance`` is reported outward.
    """

    distance: torch.Tensor
    index: torch.Tensor


def spectra(reps: torch.Tensor) -> torch.Tensor:
    """(N, S, G, G, T) real -> (N, S, G, G, T // 2 + 1) complex64 spectra over (x, y, t)."""
    return torch.fft.rfftn(reps.to(torch.float32), dim=(2, 3, 4))


def _shift_index(size: int, shift: int) -> torch.Tensor:
    """Indices of cyclic offsets -shift..shift along an axis of ``size``."""
    return torch.tensor(sorted({d % size for d in range(-shift, shift + 1)}))


def coarse_embedding(reps: torch.Tensor, keep: int = 8) -> torch.Tensor:
    """(N, S, G, G, T) -> (N, D') unit vectors invariant to cyclic shifts in x, y and t.

    The amplitude of each slice's 3D FFT over (x, y, t) does not change when the slice is
    shifted cyclically along any of the three axes; only the ``keep`` lowest spatial
    frequencies per axis are kept (the shape, not the noise), then centred and normalised.
    Dropping the phase loses detail, which is why these only pick candidates.
    """
    n, s, g, _, t = reps.shape
    amplitude = torch.fft.rfftn(reps, dim=(2, 3, 4)).abs()  # (N, S, G, G, T//2+1)
    low = list(range(min(keep, g // 2))) + list(range(g - min(keep, g // 2) + 1, g))
    index = torch.tensor(low)
    amplitude = amplitude.index_select(2, index).index_select(3, index).reshape(n, -1)
    amplitude = amplitude - amplitude.mean(dim=1, keepdim=True)
    return amplitude / amplitude.norm(dim=1, keepdim=True).clamp(min=1e-12)


def coarse_candidates(
    query: torch.Tensor, reference: torch.Tensor, count: int, block: int
) -> torch.Tensor:
    """(N_q, count) indices of the references most similar in the coarse embedding."""
    q_emb, r_emb = coarse_embedding(query), coarse_embedding(reference)
    picks = []
    for q0 in range(0, q_emb.shape[0], block):
        similarity = q_emb[q0 : q0 + block] @ r_emb.T
        picks.append(similarity.topk(count, dim=1).indices)
    return torch.cat(picks)


def exact_on_candidates(
    query_reps: torch.Tensor,
    reference_reps: torch.Tensor,
    picks: torch.Tensor,
    shift: int,
    pairs_per_block: int = 128,
) -> Nearest:
    """Exact shift search of every query against its own candidate references only.

    For each (query, candidate) pair the correlation at every cyclic (dx, dy, tau) comes from one
    inverse 3D FFT of the slice-summed cross-spectrum; the maximum is taken over |dx|, |dy| <=
    ``shift`` and every tau (the same search as rolling the reference, done at once).

    Args:
        picks: (N_q, k) candidate reference indices per query.
    """
    n_query, (g_x, g_y, frames) = query_reps.shape[0], query_reps.shape[2:]
    ref_f = spectra(reference_reps).conj().resolve_conj()
    rows, cols = _shift_index(g_x, shift), _shift_index(g_y, shift)
    distance = torch.empty(n_query, dtype=torch.float64)
    index = torch.empty(n_query, dtype=torch.int64)
    k = picks.shape[1]
    block = max(1, pairs_per_block // max(1, k))
    for q0 in range(0, n_query, block):
        q_f = spectra(query_reps[q0 : q0 + block])  # (B, S, G, G, F)
        chosen = picks[q0 : q0 + block]  # (B, k)
        b = chosen.shape[0]
        r_f = ref_f.index_select(0, chosen.reshape(-1)).reshape(b, k, *ref_f.shape[1:])
        cross = (q_f.unsqueeze(1) * r_f).sum(dim=2)  # (B, k, G, G, F)
        corr = torch.fft.irfftn(cross, s=(g_x, g_y, frames), dim=(2, 3, 4))  # (B, k, G, G, T)
        corr = corr.index_select(2, rows).index_select(3, cols)
        value, arg = corr.amax(dim=(2, 3, 4)).max(dim=1)
        distance[q0 : q0 + b] = (1.0 - value.double()).clamp(min=0.0)
        index[q0 : q0 + b] = chosen.gather(1, arg[:, None])[:, 0]
    return Nearest(distance, index)


def nearest(
    query_reps: torch.Tensor,
    reference_reps: torch.Tensor,
    *,
    shift: int,
    candidates: int = 0,
    block: int = 256,
) -> Nearest:
    """Nearest reference of every query under ``1 - shift-invariant NCC``.

    Args:
        query_reps: (N_q, S, G, G, T) normalised representations.
        reference_reps: (N_r, S, G, G, T) normalised representations.
        shift: in-plane shift searched, in grid pixels.
        candidates: 0 for the exhaustive search; otherwise the number of coarse candidates per
            query scored exactly (exhaustive anyway when ``N_r <= candidates``).
        block: queries and references handled per matrix product.

    Returns:
        :class:`Nearest` with one entry per query.
    """
    n_query, n_ref = query_reps.shape[0], reference_reps.shape[0]
    best = torch.full((n_query,), -float("inf"), dtype=torch.float64)
    index = torch.full((n_query,), -1, dtype=torch.int64)
    if n_query == 0 or n_ref == 0:
        return Nearest(1.0 - best, index)
    if query_reps.shape[1:] != reference_reps.shape[1:]:
        raise ValueError(
            f"shapes differ: {tuple(query_reps.shape)} vs {tuple(reference_reps.shape)}"
        )
    with torch.no_grad():
        if 0 < candidates < n_ref:
            picks = coarse_candidates(query_reps, reference_reps, candidates, block)
        else:
            picks = torch.arange(n_ref).expand(n_query, n_ref)
        return exact_on_candidates(query_reps, reference_reps, picks, shift)


def nearest_over_variants(
    query_variants: torch.Tensor,
    reference_reps: torch.Tensor,
    *,
    shift: int,
    candidates: int = 0,
) -> torch.Tensor:
    """(N_q,) float64 distance of every query, in its best variant, to its nearest reference.

    Args:
        query_variants: (N_q, V, S, G, G, T) variants of each query
            (:func:`fedcmr4d.audit.features.variants`).
        reference_reps: (N_r, S, G, G, T).
        shift, candidates: as in :func:`nearest` (every variant gets its own candidates).

    Returns:
        The minimum over variants of the nearest distance (``inf`` without references).
    """
    n, v = query_variants.shape[:2]
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    flat = query_variants.reshape(n * v, *query_variants.shape[2:])
    found = nearest(flat, reference_reps, shift=shift, candidates=candidates)
    return found.distance.reshape(n, v).amin(dim=1)
