"""Shift-invariant normalised cross-correlation between audit representations.

Two representations ``a`` and ``b`` of shape (S, G, G, T) (zero mean, unit norm; see
:mod:`fedcmr4d.audit.features`) are compared as

    ncc(a, b) = max over dx, dy in [-k, k] and every cyclic frame shift tau of
                sum a(z, x, y, t) * b(z, x + dx, y + dy, t + tau)

with cyclic indices, and ``distance = 1 - ncc`` (0 for a copy, about 1 for unrelated images).
Cyclic shifts keep the mean and the norm, so the value stays a true correlation coefficient.

All frame shifts come at once from the FFT along time: for each temporal frequency the
correlation is a complex matrix product over the (S * G * G) spatial entries, so a block of
queries against a block of references is one batched ``matmul`` per in-plane shift, followed by
an inverse real FFT and a max. Cost per pair: (2k + 1)^2 * (T / 2 + 1) * S * G^2 complex
multiply-adds; memory: one (queries x references x T) block at a time.

For large cohorts the search is two-stage (``candidates`` > 0): a coarse embedding that is
exactly invariant to cyclic frame shifts and nearly invariant to small in-plane shifts (temporal
amplitude spectra of 4 x 4 average-pooled representations, cosine similarity, one real matrix
product per block) picks each query's ``candidates`` most similar references, and only those
are scored with the exact shift search above. A near-copy is among the most similar references
by construction; for other subjects the reported distance can only be larger than or equal to
the exhaustive one (the true nearest may be missed), so holdout-derived thresholds err towards
flagging more. ``benchmarks/audit.py`` measures how often the two agree.
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
    """(N, S, G, G, T) real -> (N, S, G, G, T // 2 + 1) complex64 temporal spectra."""
    return torch.fft.rfft(reps.to(torch.float32), dim=-1)


def _block_ncc(
    query: torch.Tensor, reference: torch.Tensor, frames: int, shift: int
) -> torch.Tensor:
    """Max NCC over shifts for every (query, reference) pair of two blocks.

    Args:
        query: (Q, S, G, G, F) complex spectra.
        reference: (R, S, G, G, F) complex spectra.
        frames: T, the number of frames (F = T // 2 + 1).
        shift: k, the in-plane shift searched (grid pixels).

    Returns:
        (Q, R) float32 maximum correlation.
    """
    q_count, r_count, freqs = query.shape[0], reference.shape[0], query.shape[-1]
    q_mat = query.reshape(q_count, -1, freqs).permute(2, 0, 1)  # (F, Q, D)
    best = torch.full((q_count, r_count), -float("inf"))
    for dx in range(-shift, shift + 1):
        for dy in range(-shift, shift + 1):
            moved = torch.roll(reference, shifts=(dx, dy), dims=(2, 3)) if dx or dy else reference
            r_mat = moved.reshape(r_count, -1, freqs).permute(2, 1, 0).conj()  # (F, D, R)
            cross = torch.matmul(q_mat, r_mat).permute(1, 2, 0)  # (Q, R, F)
            corr = torch.fft.irfft(cross, n=frames, dim=-1)  # (Q, R, T)
            best = torch.maximum(best, corr.amax(dim=-1))
    return best


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
    block: int = 16,
) -> Nearest:
    """Exact shift search of every query against its own candidate references only.

    The query is rolled instead of the references (same correlation, mirrored shift): all
    (2k + 1)^2 rolled copies of a query form the rows of one matrix, so a block of queries is a
    single batched (F, shifts, D) x (F, D, candidates) product.
    """
    frames = query_reps.shape[-1]
    n_ref, freqs = reference_reps.shape[0], frames // 2 + 1
    ref_fd = spectra(reference_reps).reshape(n_ref, -1, freqs).permute(2, 0, 1).conj()
    ref_fd = ref_fd.resolve_conj().contiguous()  # (F, N_r, D), conjugated once
    offsets = [(dx, dy) for dx in range(-shift, shift + 1) for dy in range(-shift, shift + 1)]
    distance = torch.empty(query_reps.shape[0], dtype=torch.float64)
    index = torch.empty(query_reps.shape[0], dtype=torch.int64)
    for q0 in range(0, query_reps.shape[0], block):
        q_spec = spectra(query_reps[q0 : q0 + block])  # (B, S, G, G, F)
        chosen = picks[q0 : q0 + block]  # (B, k)
        b, k = chosen.shape
        moved = torch.stack([torch.roll(q_spec, (-dx, -dy), (2, 3)) for dx, dy in offsets], 1)
        q_mat = moved.reshape(b, len(offsets), -1, freqs).permute(3, 0, 1, 2)  # (F, B, n, D)
        r_mat = ref_fd.index_select(1, chosen.reshape(-1)).reshape(freqs, b, k, -1)  # (F,B,k,D)
        cross = torch.matmul(q_mat.contiguous(), r_mat.transpose(2, 3))  # (F, B, n, k)
        corr = torch.fft.irfft(cross.permute(1, 2, 3, 0), n=frames, dim=-1)  # (B, n, k, T)
        value, arg = corr.amax(dim=(1, 3)).max(dim=1)
        distance[q0 : q0 + block] = (1.0 - value.double()).clamp(min=0.0)
        index[q0 : q0 + block] = chosen.gather(1, arg[:, None])[:, 0]
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
            return exact_on_candidates(query_reps, reference_reps, picks, shift)
        frames = query_reps.shape[-1]
        ref_spec = spectra(reference_reps)
        for q0 in range(0, n_query, block):
            q_spec = spectra(query_reps[q0 : q0 + block])
            for r0 in range(0, n_ref, block):
                ncc = _block_ncc(q_spec, ref_spec[r0 : r0 + block], frames, shift)
                value, arg = ncc.max(dim=1)
                better = value.double() > best[q0 : q0 + block]
                best[q0 : q0 + block] = torch.where(better, value.double(), best[q0 : q0 + block])
                index[q0 : q0 + block] = torch.where(better, arg + r0, index[q0 : q0 + block])
    distance = (1.0 - best).clamp(min=0.0)
    return Nearest(distance, index)
