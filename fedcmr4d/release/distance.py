"""Shift-invariant normalised cross-correlation between audit representations.

Two representations ``a`` and ``b`` of shape (S, G, G, T) (zero mean, unit norm; see
:mod:`fedcmr4d.release.features`) are compared as

    ncc(a, b) = max over dx, dy in [-k, k] and every cyclic frame shift tau of
                sum a(z, x, y, t) * b(z, x + dx, y + dy, t + tau)

with cyclic indices, and ``distance = 1 - ncc`` (0 for a copy, about 1 for unrelated images).
Cyclic shifts keep the mean and the norm, so the value stays a true correlation coefficient.

All frame shifts come at once from the FFT along time: for each temporal frequency the
correlation is a complex matrix product over the (S * G * G) spatial entries, so a block of
queries against a block of references is one batched ``matmul`` per in-plane shift, followed by
an inverse real FFT and a max. Cost per pair: (2k + 1)^2 * (T / 2 + 1) * S * G^2 complex
multiply-adds; memory: one (queries x references x T) block at a time.
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


def nearest(
    query_reps: torch.Tensor,
    reference_reps: torch.Tensor,
    *,
    shift: int,
    block: int = 256,
) -> Nearest:
    """Nearest reference of every query under ``1 - shift-invariant NCC``.

    Args:
        query_reps: (N_q, S, G, G, T) normalised representations.
        reference_reps: (N_r, S, G, G, T) normalised representations.
        shift: in-plane shift searched, in grid pixels.
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
    frames = query_reps.shape[-1]
    ref_spec = spectra(reference_reps)
    with torch.no_grad():
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
