"""Shift-aware normalised cross-correlation between audit representations.

Two representations ``a`` and ``b`` of shape (S, G, G, T) (see :mod:`fedcmr4d.audit.features`)
are compared on their inner windows (:data:`EDGE_MARGIN` pixels off every in-plane edge) as

    ncc(a, b) = max over dx, dy in [-k, k] and every cyclic frame shift tau of
                corr over O(dx, dy) of a(z, x + dx, y + dy, t + tau) and b(z, x, y, t)

where O(dx, dy) is the set of pixels where both windows are defined after the in-plane shift
(linear, not cyclic: the rows and columns a shift moves in are left out on both sides) and
``corr`` is the Pearson correlation over it (means and norms of the overlap itself); the cardiac
cycle is cyclic, so tau wraps. ``distance = 1 - ncc``: ~0 for a copy -- a copy moved by a few
voxels with a zero-filled border included -- and about 1 for unrelated images.

All shifts come at once from FFTs over (x, y, t): the windows are zero-padded in-plane, the
slice-summed product of the two spectra is inverse transformed to the raw correlation at every
(dx, dy, tau), and each offset's overlap sums and sums of squares (integral images, per
subject) turn it into the overlap's correlation. Cost per pair: S * P^2 * (T / 2 + 1) complex
multiplies plus one P x P x T inverse FFT (P >= W + k, the padded window), whatever k.

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


#: Grid pixels left out along every in-plane edge before comparing: the low-pass filter and the
#: resampling blend a subject's border with what lies beyond it, which differs between a subject
#: and its shifted copy (zero-filled, or other content moved in).
EDGE_MARGIN = 1


def _fft_size(n: int) -> int:
    """Smallest size >= n whose prime factors are 2, 3 and 5 (fast FFTs)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _window(reps: torch.Tensor, margin: int) -> torch.Tensor:
    """(N, S, G, G, T) -> (N, S, W, W, T) inner window, ``margin`` pixels off every edge."""
    g = reps.shape[2]
    m = min(margin, (g - 1) // 2)
    return reps[:, :, m : g - m, m : g - m].to(torch.float32)


def spectra(reps: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """(N, S, W, W, T) real -> (N, S, P, P, T // 2 + 1) complex64 spectra over (x, y, t).

    ``size`` P >= W zero-pads the in-plane axes, so that in-plane correlations up to
    ``P - W`` pixels do not wrap around (linear, not cyclic, in x and y; cyclic in t).
    """
    p = reps.shape[2] if size is None else size
    return torch.fft.rfftn(reps.to(torch.float32), s=(p, p, reps.shape[4]), dim=(2, 3, 4))


def _offsets(shift: int) -> list[int]:
    return list(range(-shift, shift + 1))


def overlap_sums(reps: torch.Tensor, shift: int, *, query: bool) -> tuple[torch.Tensor, ...]:
    """Sum and sum of squares of each representation over its part of every shifted overlap.

    With ``c(d) = sum_x r(x) q(x + d)`` over the pixels where both are defined, the query's part
    of the overlap at offset ``d`` along an axis of width W is ``[max(0, d), W + min(0, d))``
    and the reference's ``[max(0, -d), W - max(0, d))``.

    Args:
        reps: (N, S, W, W, T) windows.
        shift: offsets -shift..shift along x and y.
        query: the query's part (True) or the reference's (False).

    Returns:
        (sums, squares, counts): (N, 2k+1, 2k+1) sums and sums of squares (float64) and the
        (2k+1, 2k+1) number of values in each overlap.
    """
    n, s, w, _, t = reps.shape
    plane = reps.double().sum(dim=(1, 4))  # (N, W, W)
    square = reps.double().square().sum(dim=(1, 4))
    # integral images with a zero first row and column: box sums in O(1) per offset
    plane_i = torch.nn.functional.pad(plane.cumsum(1).cumsum(2), (1, 0, 1, 0))
    square_i = torch.nn.functional.pad(square.cumsum(1).cumsum(2), (1, 0, 1, 0))
    offsets = _offsets(shift)
    ranges = [(max(0, d), w + min(0, d)) if query else (max(0, -d), w - max(0, d)) for d in offsets]
    lo = torch.tensor([a for a, _ in ranges])
    hi = torch.tensor([b for _, b in ranges])

    def box(integral: torch.Tensor) -> torch.Tensor:
        def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return integral[:, rows][:, :, cols]

        return at(hi, hi) - at(lo, hi) - at(hi, lo) + at(lo, lo)

    counts = ((hi - lo)[:, None] * (hi - lo)[None, :] * s * t).double()
    return box(plane_i), box(square_i), counts


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
    query: torch.Tensor,
    reference: torch.Tensor | References,
    count: int,
    block: int,
    *,
    exclude: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """(N_q, count) indices of the references most similar in the coarse embedding.

    ``exclude``: a reference index never picked (leave-one-out: the query's own entry), or an
    (N_q,) tensor of one such index per query.
    """
    refs = reference if isinstance(reference, References) else None
    q_emb = coarse_embedding(query)
    r_emb = refs.embedding if refs is not None else coarse_embedding(reference)  # type: ignore[arg-type]
    picks = []
    for q0 in range(0, q_emb.shape[0], block):
        similarity = q_emb[q0 : q0 + block] @ r_emb.T
        if isinstance(exclude, torch.Tensor):
            rows = torch.arange(similarity.shape[0])
            similarity[rows, exclude[q0 : q0 + block]] = -float("inf")
        elif exclude is not None:
            similarity[:, exclude] = -float("inf")
        picks.append(similarity.topk(count, dim=1).indices)
    return torch.cat(picks)


@dataclass
class References:
    """The reference side of the search, computed once for many queries (:func:`prepare`).

    A site's training subjects are the references of its holdout, its synthetic queries and
    each training subject's leave-one-out search; recomputing their spectra for every query
    batch cost most of a site's audit time.

    Attributes:
        reps: (N_r, S, G, G, T) the representations.
        shift: the in-plane shift the spectra are padded for (already capped at ``W - 1``).
        size: P, the padded in-plane FFT size.
        spectra: (N_r, S, P, P, T // 2 + 1) conjugated spectra of the inner windows.
        sums, variances: (N_r, 2k+1, 2k+1) float64 overlap sums and variances per offset.
        embedding: (N_r, D') coarse embeddings (:func:`coarse_embedding`).
    """

    reps: torch.Tensor
    shift: int
    size: int
    spectra: torch.Tensor
    sums: torch.Tensor
    variances: torch.Tensor
    embedding: torch.Tensor


def prepare(reference_reps: torch.Tensor, shift: int, margin: int = EDGE_MARGIN) -> References:
    """The reference terms of :func:`exact_on_candidates` and :func:`coarse_candidates`."""
    with torch.no_grad():
        window = _window(reference_reps, margin)
        width = window.shape[2]
        shift = min(shift, width - 1)
        size = _fft_size(width + shift)
        r_sum, r_sq, count = overlap_sums(window, shift, query=False)
        return References(
            reps=reference_reps,
            shift=shift,
            size=size,
            spectra=spectra(window, size).conj().resolve_conj(),
            sums=r_sum,
            variances=(r_sq - r_sum.square() / count).clamp(min=0.0),
            embedding=coarse_embedding(reference_reps),
        )


def exact_on_candidates(
    query_reps: torch.Tensor,
    reference_reps: torch.Tensor | References,
    picks: torch.Tensor,
    shift: int,
    pairs_per_block: int = 128,
    margin: int = EDGE_MARGIN,
) -> Nearest:
    """Exact shift search of every query against its own candidate references only.

    Both sides are cut to their inner window (``margin`` pixels off every edge) and zero-padded,
    so one inverse 3D FFT of the slice-summed cross-spectrum of a (query, candidate) pair gives
    the raw correlation over the overlap at every in-plane offset (linear) and every frame
    shift tau (cyclic). Per offset the overlap's own sums (:func:`overlap_sums`) turn it into
    the NCC of the overlapping pixels only -- means and norms taken over the overlap -- so the
    border that a shift moves in (zero fill, or content from outside the field of view) does not
    count, and a shifted copy comes out near 0. The maximum is over |dx|, |dy| <= ``shift``
    and every tau.

    Args:
        reference_reps: the references, or their :func:`prepare`-d terms (then ``shift`` and
            ``margin`` must be those they were prepared with).
        picks: (N_q, k) candidate reference indices per query.
    """
    refs = (
        reference_reps
        if isinstance(reference_reps, References)
        else prepare(reference_reps, shift, margin)
    )
    query_w = _window(query_reps, margin)
    n_query, frames = query_w.shape[0], query_w.shape[4]
    shift, size, ref_f = refs.shift, refs.size, refs.spectra
    offsets = torch.tensor([d % size for d in _offsets(shift)])
    q_sum, q_sq, count = overlap_sums(query_w, shift, query=True)
    r_sum, r_var = refs.sums, refs.variances
    q_var = (q_sq - q_sum.square() / count).clamp(min=0.0)
    distance = torch.empty(n_query, dtype=torch.float64)
    index = torch.empty(n_query, dtype=torch.int64)
    k = picks.shape[1]
    block = max(1, pairs_per_block // max(1, k))
    for q0 in range(0, n_query, block):
        q_f = spectra(query_w[q0 : q0 + block], size)  # (B, S, P, P, F)
        chosen = picks[q0 : q0 + block]  # (B, k)
        b, flat = chosen.shape[0], chosen.reshape(-1)
        r_f = ref_f.index_select(0, flat).reshape(b, k, *ref_f.shape[1:])
        cross = (q_f.unsqueeze(1) * r_f).sum(dim=2)  # (B, k, P, P, F)
        corr = torch.fft.irfftn(cross, s=(size, size, frames), dim=(2, 3, 4))  # (B, k, P, P, T)
        corr = corr.index_select(2, offsets).index_select(3, offsets).double()
        qs = q_sum[q0 : q0 + b, None]  # (B, 1, O, O)
        rs = r_sum.index_select(0, flat).reshape(b, k, *r_sum.shape[1:])
        rv = r_var.index_select(0, flat).reshape(b, k, *r_var.shape[1:])
        scale = (q_var[q0 : q0 + b, None] * rv).sqrt()  # (B, k, O, O)
        centred = corr - (qs * rs / count)[..., None]
        ncc = torch.where(
            scale[..., None] > 1e-12, centred / scale.clamp(min=1e-12)[..., None], 0.0
        )
        value, arg = ncc.amax(dim=(2, 3, 4)).max(dim=1)
        distance[q0 : q0 + b] = (1.0 - value).clamp(min=0.0)
        index[q0 : q0 + b] = chosen.gather(1, arg[:, None])[:, 0]
    return Nearest(distance, index)


def nearest(
    query_reps: torch.Tensor,
    reference_reps: torch.Tensor | References,
    *,
    shift: int,
    candidates: int = 0,
    block: int = 256,
    exclude: int | torch.Tensor | None = None,
) -> Nearest:
    """Nearest reference of every query under ``1 - shift-invariant NCC``.

    Args:
        query_reps: (N_q, S, G, G, T) normalised representations.
        reference_reps: (N_r, S, G, G, T) normalised representations.
        shift: in-plane shift searched, in grid pixels.
        candidates: 0 for the exhaustive search; otherwise the number of coarse candidates per
            query scored exactly (exhaustive anyway when ``N_r <= candidates``).
        block: queries and references handled per matrix product.
        exclude: a reference index left out (leave-one-out), exactly as if it were removed; or
            an (N_q,) tensor of valid indices, one left out for each query (many
            leave-one-out searches at once).

    Returns:
        :class:`Nearest` with one entry per query.
    """
    raw = reference_reps.reps if isinstance(reference_reps, References) else reference_reps
    own = _per_query_exclusion(exclude, query_reps.shape[0], raw.shape[0])
    kept = [i for i in range(raw.shape[0]) if own is not None or i != exclude]
    n_query, n_ref = query_reps.shape[0], len(kept) - (own is not None)
    best = torch.full((n_query,), -float("inf"), dtype=torch.float64)
    index = torch.full((n_query,), -1, dtype=torch.int64)
    if n_query == 0 or n_ref == 0:
        return Nearest(1.0 - best, index)
    if query_reps.shape[1:] != raw.shape[1:]:
        raise ValueError(f"shapes differ: {tuple(query_reps.shape)} vs {tuple(raw.shape)}")
    with torch.no_grad():
        if 0 < candidates < n_ref:
            picks = coarse_candidates(
                query_reps, reference_reps, candidates, block, exclude=exclude
            )
        elif own is not None:  # every reference but the query's own, in index order
            others = torch.arange(n_ref).expand(n_query, n_ref)
            picks = others + (others >= own[:, None]).long()
        else:
            picks = torch.tensor(kept).expand(n_query, n_ref)
        return exact_on_candidates(query_reps, reference_reps, picks, shift)


def _per_query_exclusion(
    exclude: int | torch.Tensor | None, n_query: int, n_ref: int
) -> torch.Tensor | None:
    """``exclude`` as an (N_q,) int64 tensor when it is one (checked), else None."""
    if not isinstance(exclude, torch.Tensor):
        return None
    own = exclude.to(torch.int64).reshape(-1)
    if own.shape[0] != n_query:
        raise ValueError(f"exclude has {own.shape[0]} entries for {n_query} queries")
    if own.numel() and (int(own.min()) < 0 or int(own.max()) >= n_ref):
        raise ValueError(f"exclude indices must lie in [0, {n_ref})")
    return own


#: Query subjects (each with all its variants) searched at once by :func:`nearest_over_variants`.
QUERIES_PER_CHUNK = 16


def nearest_over_variants(
    query_variants: torch.Tensor,
    reference_reps: torch.Tensor | References,
    *,
    shift: int,
    candidates: int = 0,
    exclude: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """(N_q,) float64 distance of every query, in its best variant, to its nearest reference.

    Args:
        query_variants: (N_q, V, S, G, G, T) variants of each query
            (:func:`fedcmr4d.audit.features.variants`).
        reference_reps: (N_r, S, G, G, T), or their :func:`prepare`-d terms (computed once
            when many queries search the same references).
        shift, candidates, exclude: as in :func:`nearest` (every variant gets its own
            candidates; a tensor ``exclude`` has one index per query, for all its variants).

    Returns:
        The minimum over variants of the nearest distance (``inf`` without references).
    """
    n, v = query_variants.shape[:2]
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    if not isinstance(reference_reps, References) and reference_reps.shape[0] > 0:
        reference_reps = prepare(reference_reps, shift)  # once for every chunk below
    best = []
    for q0 in range(0, n, QUERIES_PER_CHUNK):  # queries are independent: chunks bound memory
        chunk = query_variants[q0 : q0 + QUERIES_PER_CHUNK]
        flat = chunk.reshape(chunk.shape[0] * v, *query_variants.shape[2:])
        left_out = exclude
        if isinstance(exclude, torch.Tensor):
            left_out = exclude[q0 : q0 + QUERIES_PER_CHUNK].repeat_interleave(v)
        found = nearest(flat, reference_reps, shift=shift, candidates=candidates, exclude=left_out)
        best.append(found.distance.reshape(chunk.shape[0], v).amin(dim=1))
    return torch.cat(best)
