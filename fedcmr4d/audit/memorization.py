"""Memorization audit: per-site copy test, DCR bits, the combined verdict, audit.json.

Method (``variant_shift_ncc_tail``): every cine is mapped onto a small common grid covering all
of its slices (:mod:`fedcmr4d.audit.features`); two subjects are compared by ``1 - max NCC``
over cyclic shifts of the cardiac phase, in-plane shifts up to ``audit.max_shift`` voxels, and
the query mirrored and rotated (``audit.flips``, ``audit.rotations_deg``)
(:mod:`fedcmr4d.audit.distance`). A copy of a training subject stays near 0 through noise,
translation, gamma, a rolled cycle, a flip or a small rotation; different subjects are far apart.

Where it runs (DESIGN.md, privacy model): each site computes, on its own train/holdout split,

- ``d_s``: each synthetic subject's nearest training distance, ``h_s`` its nearest holdout
  distance, and the calibration sample ``r_1..r_n``: the holdout-to-train nearest distances
  plus each training subject's leave-one-out nearest distance (all stay at the site);
- a **tail p-value** per synthetic subject: ``r`` is modelled as Weibull (``log r``
  minimum-Gumbel), and ``p_s`` is the predictive probability that a new draw lies at most at
  ``d_s`` (:func:`tail_p_values`), exact for Weibull data at any n, so a subject that is as far
  from training as an unseen real patient gets a uniform p-value;
- a **copy flag** ``p_s < copy_alpha / (N * K)`` (Bonferroni over the N synthetic subjects and
  the K sites that trained): a fresh cohort raises no flag with probability >= 1 - copy_alpha;
- a **DCR bit** ``d_s < h_s``.

A site sends only the flags, the bits, its threshold (the distance at which ``p_s`` reaches the
flag level) and counts (:class:`SiteAnswer`); :func:`combine_answers` turns any number of them
into ``audit.json``:

- ``passed`` = no flag, every site calibrated, and for no site k ``dcr_share_k > dcr_expected_k
  + dcr_tolerance`` with binomial ``p_k < dcr_alpha / K`` (``dcr_expected_k = n_train_k /
  (n_train_k + n_holdout_k)``), and no membership-inference stage below ``membership_alpha``
  (:mod:`fedcmr4d.audit.membership`).

The local command is the same computation with one site. Its real-subject distances go only
into ``audit-full.json``, which stays with the steward; ``audit.json`` (and ``audit.html``) hold
the verdict, thresholds, counts, p-values and the method: nothing a release must not carry.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import scipy.optimize
import scipy.stats
import torch

from fedcmr4d import __version__
from fedcmr4d.audit.distance import (
    QUERIES_PER_CHUNK,
    References,
    nearest_over_variants,
    prepare,
)
from fedcmr4d.audit.features import AuditGrid, represent_cohort, variants
from fedcmr4d.config import AuditConfig
from fedcmr4d.data.cohort import CINE_FILE, open_cohort
from fedcmr4d.errors import AuditFailedError, ConfigError, InputError
from fedcmr4d.io import atomic_write_json, tree_hashes

METHOD_NAME = "variant_shift_ncc_tail"
#: Distances below this count as exact copies (log of 0 is undefined).
DISTANCE_FLOOR = 1e-9
FULL_SUFFIX = "-full"


@dataclass
class SyntheticSet:
    """The synthetic cohort, hashed and represented (by whoever computes distances).

    Attributes:
        ids: synthetic subject ids, in cohort order.
        reps: (N, slices, grid, grid, frames) audit representations.
        grid: the audit grid they were made on.
        files: relative path -> SHA-256 of every file of the synthetic cohort.
    """

    ids: list[str]
    reps: torch.Tensor
    grid: AuditGrid
    files: dict[str, str]


def grid_from_config(config: AuditConfig, fov_mm: float) -> AuditGrid:
    """The audit grid for a field of view (already capped by the synthetic cohort)."""
    return AuditGrid(
        fov_mm=float(fov_mm),
        grid=config.grid,
        slices=config.slices,
        frames=config.frames,
        lowpass_sigma=config.lowpass_sigma,
        max_shift=config.max_shift,
        candidates=config.candidates,
        flips=config.flips,
        rotations_deg=tuple(float(a) for a in config.rotations_deg),
    )


def synthetic_fov_mm(synthetic_dir: Path, subject_ids: Sequence[str]) -> float:
    """Smallest in-plane extent (mm) over the synthetic subjects, read from NIfTI headers."""
    smallest = math.inf
    for subject_id in subject_ids:
        path = Path(synthetic_dir) / subject_id / CINE_FILE
        try:
            header: Any = nib.load(str(path)).header  # type: ignore[attr-defined]
        except Exception as exc:  # nibabel raises many types for unreadable files
            raise InputError(f"{path}: not a readable NIfTI ({type(exc).__name__})") from None
        shape, zooms = header.get_data_shape(), header.get_zooms()
        smallest = min(smallest, shape[0] * float(zooms[0]), shape[1] * float(zooms[1]))
    return smallest


def prepare_synthetic(synthetic_dir: str | Path, config: AuditConfig) -> SyntheticSet:
    """Hash, size and represent the synthetic cohort."""
    root = Path(synthetic_dir)
    cohort = open_cohort(root)
    if len(cohort) == 0:
        raise InputError(f"{root / 'cohort.json'}: the synthetic cohort lists no subjects")
    files = tree_hashes(root)
    fov = min(config.fov_mm, synthetic_fov_mm(root, cohort.subject_ids))
    grid = grid_from_config(config, fov)
    ids, reps = represent_cohort(cohort, grid)
    if tree_hashes(root) != files:
        raise InputError(f"{root}: the synthetic cohort changed while it was being audited")
    return SyntheticSet(ids, reps, grid, files)


#: Simulated standard samples per calibration size n behind :func:`tail_p_values` (seeded).
TAIL_SIMULATIONS = 20000
_TAIL_SEED = 20261201


@functools.lru_cache(maxsize=64)
def _pivot_estimates(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (ddof 1) of ``TAIL_SIMULATIONS`` samples of n standard minimum-Gumbel draws
    (``log E`` with E ~ Exp(1)): the law of the estimates when the model holds, for any
    location and scale (they are equivariant)."""
    rng = np.random.default_rng(_TAIL_SEED + n)
    means, sds = [], []
    rows = max(1, min(TAIL_SIMULATIONS, 2_000_000 // n))
    for start in range(0, TAIL_SIMULATIONS, rows):
        w = np.log(rng.standard_exponential((min(rows, TAIL_SIMULATIONS - start), n)))
        means.append(w.mean(axis=1))
        sds.append(w.std(axis=1, ddof=1))
    return np.concatenate(means), np.concatenate(sds)


def _log_fit(reference: np.ndarray) -> tuple[float, float, int]:
    logs = np.log(np.maximum(np.asarray(reference, dtype=np.float64), DISTANCE_FLOOR)).ravel()
    if logs.size < 2:
        raise InputError(f"tail model: needs at least 2 reference distances, got {logs.size}")
    return float(logs.mean()), max(float(logs.std(ddof=1)), 1e-12), int(logs.size)


def _pivot_cdf(t: np.ndarray, n: int) -> np.ndarray:
    """``P(T <= t)`` for the pivot ``T = (log D - mean) / sd`` of a new draw D (see
    :func:`tail_p_values`), averaged over the simulated estimates in chunks."""
    means, sds = _pivot_estimates(n)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    out = np.empty(t.shape, dtype=np.float64)
    flat, result = t.ravel(), out.ravel()
    step = max(1, 2_000_000 // means.size)
    for start in range(0, flat.size, step):
        w = means[None, :] + sds[None, :] * flat[start : start + step, None]
        result[start : start + step] = (-np.expm1(-np.exp(np.minimum(w, 50.0)))).mean(axis=1)
    return out


def tail_p_values(reference: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Predictive p-values of ``distances`` under a Weibull fit of the reference distances.

    ``reference`` are the n calibration nearest distances (the site's holdout-to-train
    distances, and the training subjects' leave-one-out nearest distances: see
    :func:`calibration_distances`). A nearest distance is the minimum of many distances, and the
    extreme-value law of a minimum of positive variables is the Weibull: ``log D`` is
    minimum-Gumbel with location mu and scale beta, ``P(D <= d) = 1 - exp(-(d / e^mu)^(1 /
    beta))``, a power law near 0 (the log-normal's lower tail is far lighter, and made fresh
    cohorts fail more often than ``copy_alpha`` says). With ``m``, ``s`` the mean and sd of the
    n log distances, ``T = (log D - m) / s`` for a new draw D has a law that depends on n only
    (location-scale equivariance), so the p-value ``P(T <= t)`` is exact for Weibull data at any
    n, as the Student-t is for log-normal data. It is computed as the mean of ``F(m* + s* t)``
    over ``TAIL_SIMULATIONS`` seeded standard samples (``F`` the minimum-Gumbel CDF): smooth and
    accurate far into the tail. Needs n >= 2.
    """
    mean, sd, n = _log_fit(reference)
    query = np.log(np.maximum(np.asarray(distances, dtype=np.float64), DISTANCE_FLOOR))
    return _pivot_cdf((query - mean) / sd, n).reshape(query.shape)


def tail_threshold(reference: np.ndarray, level: float) -> float:
    """The distance whose :func:`tail_p_values` p-value is ``level`` (flag below it)."""
    mean, sd, n = _log_fit(reference)
    low, high = -1.0, 0.0
    while float(_pivot_cdf(np.array([low]), n)[0]) > level:
        low *= 2.0
    while float(_pivot_cdf(np.array([high]), n)[0]) < level:
        high = 2.0 * high + 1.0
    t = scipy.optimize.brentq(
        lambda x: float(_pivot_cdf(np.array([x]), n)[0]) - level, low, high, xtol=1e-10
    )
    return float(math.exp(mean + sd * t))


def calibration_distances(holdout_to_train: np.ndarray, train_loo: np.ndarray) -> np.ndarray:
    """The tail model's reference sample: holdout-to-train nearest distances, plus each training
    subject's nearest distance to the other training subjects (leave one out).

    Both are "how near is a patient to the training patients other than itself": the holdout
    ones exactly as a fresh subject's, the leave-one-out ones against one reference fewer. They
    multiply the sample that fixes the tail (a site with 10 holdout and 40 training subjects
    calibrates on 50), which is what keeps near-copies caught at small holdout sizes. An exact
    duplicate inside the training set (distance at the floor) says nothing about unseen patients
    and is left out.
    """
    holdout = np.asarray(holdout_to_train, dtype=np.float64).ravel()
    loo = np.asarray(train_loo, dtype=np.float64).ravel()
    return np.concatenate([holdout, loo[loo > DISTANCE_FLOOR]])


@dataclass
class SiteAnswer:
    """What one site sends: bits per synthetic subject, its threshold and counts.

    Attributes:
        site: the site's name.
        n_train, n_holdout: sizes of the site's split.
        synthetic_ids: the synthetic ids the two bit lists refer to (synthetic data).
        copy_flags: per synthetic subject, its tail p-value is below ``level``.
        dcr_bits: per synthetic subject, nearer to this site's train than holdout set.
        threshold: the distance at which the p-value reaches ``level`` (None: not calibrated).
        level: the per-subject flag level ``copy_alpha / (N * K)``.
        calibrated: the site had ``min_holdout`` holdout subjects and a usable spread.
        method: the audit grid and settings the site used (its own config).
        membership: per-stage membership-inference aggregates (see
            :mod:`fedcmr4d.audit.membership`), or None when no model was given.
    """

    site: str
    n_train: int
    n_holdout: int
    synthetic_ids: list[str]
    copy_flags: list[bool]
    dcr_bits: list[bool]
    threshold: float | None
    level: float
    calibrated: bool
    method: dict[str, Any] = field(default_factory=dict)
    membership: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SiteAnswer:
        """Parse a reply; a wrong shape raises :class:`InputError` naming the site."""
        expected = set(cls.__dataclass_fields__)
        name = payload.get("site", "?")
        if set(payload) != expected:
            raise InputError(f"site {name}: answer keys {sorted(payload)} != {sorted(expected)}")
        try:
            answer = cls(
                site=str(payload["site"]),
                n_train=int(payload["n_train"]),
                n_holdout=int(payload["n_holdout"]),
                synthetic_ids=[str(v) for v in payload["synthetic_ids"]],
                copy_flags=[_bit(v) for v in payload["copy_flags"]],
                dcr_bits=[_bit(v) for v in payload["dcr_bits"]],
                threshold=None if payload["threshold"] is None else float(payload["threshold"]),
                level=float(payload["level"]),
                calibrated=_bit(payload["calibrated"]),
                method=dict(payload["method"]),
                membership=None if payload["membership"] is None else dict(payload["membership"]),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"site {name}: malformed answer ({exc})") from None
        answer.check()
        return answer

    def check(self) -> None:
        """Plausibility of the answer on its own (the coordinator adds what it knows)."""
        n = len(self.synthetic_ids)
        if len(self.copy_flags) != n or len(self.dcr_bits) != n:
            raise InputError(f"site {self.site}: bit lists do not match {n} synthetic ids")
        if self.n_train < 1 or self.n_holdout < 0:
            raise InputError(
                f"site {self.site}: implausible counts n_train={self.n_train}, "
                f"n_holdout={self.n_holdout}"
            )
        if self.calibrated:
            if self.threshold is None or not (0.0 < self.threshold <= 2.0):
                raise InputError(
                    f"site {self.site}: threshold {self.threshold} is not in (0, 2] "
                    "(1 - NCC distances lie in [0, 2])"
                )
            if self.n_holdout < 2:
                raise InputError(f"site {self.site}: calibrated with {self.n_holdout} holdout")
        if not (0.0 < self.level < 1.0):
            raise InputError(f"site {self.site}: flag level {self.level} not in (0, 1)")


def _bit(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{value!r} is not a bit")


@dataclass
class SiteDetail:
    """What stays at the site (written only to the steward's ``audit-full.json`` locally)."""

    holdout_to_train: list[float]
    train_leave_one_out: list[float]
    synthetic_to_train: list[float]
    synthetic_to_holdout: list[float]
    p_values: list[float]


def site_answer_from_reps(
    synthetic_ids: Sequence[str],
    synthetic_reps: torch.Tensor,
    train_reps: torch.Tensor,
    holdout_reps: torch.Tensor,
    *,
    grid: AuditGrid,
    config: AuditConfig,
    site: str,
    n_sites: int = 1,
    membership: dict[str, Any] | None = None,
) -> tuple[SiteAnswer, SiteDetail]:
    """One site's copy test and DCR bits on representations made with ``grid``.

    Args:
        synthetic_ids, synthetic_reps: the synthetic subjects, (N, S, G, G, T).
        train_reps, holdout_reps: the site's split, (N_t >= 1, ...) and (N_h, ...).
        grid: the grid all of them were made with (search settings too).
        config: the site's ``copy_alpha`` and ``min_holdout``.
        site: the site's name.
        n_sites: K, the sites that trained (Bonferroni); values below 1 count as 1.
        membership: the site's membership aggregates, passed through.

    Raises:
        ConfigError: a holdout subject is at distance 0 from a training subject (the split
            overlaps; the threshold would be 0).
    """
    if train_reps.shape[0] == 0:
        raise InputError(f"site {site}: no training subjects to audit against")
    search = {"shift": grid.shift_grid, "candidates": grid.candidates}
    train = prepare(train_reps, grid.shift_grid)  # the references of every search below
    holdout_d = nearest_over_variants(variants(holdout_reps, grid), train, **search).numpy()
    if holdout_d.size and float(holdout_d.min()) <= DISTANCE_FLOOR:
        raise ConfigError(
            f"site {site}: a holdout subject is identical to a training subject (distance 0): "
            "train and holdout overlap, and the threshold would be 0"
        )
    train_loo = train_leave_one_out(train, grid)
    syn_variants = variants(synthetic_reps, grid)
    to_train = nearest_over_variants(syn_variants, train, **search).numpy()
    to_holdout = nearest_over_variants(syn_variants, holdout_reps, **search).numpy()
    if holdout_reps.shape[0] == 0:
        to_holdout = np.full(len(synthetic_ids), math.inf)
    n = max(1, len(synthetic_ids))
    level = config.copy_alpha / (n * max(1, int(n_sites)))
    reference = calibration_distances(holdout_d, train_loo)
    calibrated = holdout_d.size >= config.min_holdout and float(np.std(np.log(reference))) > 0
    if calibrated:
        p_values = tail_p_values(reference, to_train)
        threshold: float | None = tail_threshold(reference, level)
    else:
        p_values, threshold = np.ones(len(synthetic_ids)), None
    answer = SiteAnswer(
        site=site,
        n_train=int(train_reps.shape[0]),
        n_holdout=int(holdout_reps.shape[0]),
        synthetic_ids=list(synthetic_ids),
        copy_flags=[bool(p < level) for p in p_values],
        dcr_bits=[bool(a < b) for a, b in zip(to_train, to_holdout, strict=True)],
        threshold=threshold,
        level=level,
        calibrated=bool(calibrated),
        method={
            "grid": grid.as_dict(),
            "copy_alpha": config.copy_alpha,
            "min_holdout": config.min_holdout,
        },
        membership=membership,
    )
    answer.check()
    detail = SiteDetail(
        holdout_to_train=sorted(float(d) for d in holdout_d),
        train_leave_one_out=sorted(float(d) for d in train_loo),
        synthetic_to_train=[float(d) for d in to_train],
        synthetic_to_holdout=[_finite(d) for d in to_holdout],  # type: ignore[misc]
        p_values=[float(p) for p in p_values],
    )
    return answer, detail


def train_leave_one_out(train: References, grid: AuditGrid) -> np.ndarray:
    """Each training subject's nearest distance (same search as every query) to the other
    training subjects; empty with fewer than 2 of them.

    ``train``: the training subjects :func:`~fedcmr4d.audit.distance.prepare`-d once; subject
    j's own entry is excluded from its search (the same candidates and distances as searching
    the cohort without it)."""
    n = int(train.reps.shape[0])
    if n < 2:
        return np.zeros(0)
    search = {"shift": grid.shift_grid, "candidates": grid.candidates}
    out = []
    for j0 in range(0, n, QUERIES_PER_CHUNK):  # all variants at once would hold ~V x the cohort
        own = torch.arange(j0, min(n, j0 + QUERIES_PER_CHUNK))
        mine = variants(train.reps[own], grid)
        out.append(nearest_over_variants(mine, train, exclude=own, **search))
    return torch.cat(out).numpy()


def _represent_dirs(dirs: Sequence[str | Path], grid: AuditGrid) -> torch.Tensor:
    parts = [represent_cohort(open_cohort(d), grid)[1] for d in dirs]
    if not parts:
        return torch.zeros((0, grid.slices, grid.grid, grid.grid, grid.frames))
    return torch.cat(parts)


def _check_answers(answers: Sequence[SiteAnswer]) -> None:
    if not answers:
        raise InputError("audit: no site answers to combine")
    first = answers[0]
    names = [a.site for a in answers]
    if len(set(names)) != len(names):
        raise InputError(f"audit: duplicate site names {names}")
    for answer in answers[1:]:
        if answer.synthetic_ids != first.synthetic_ids:
            raise InputError(
                f"site {answer.site}: answered for other synthetic ids than {first.site}"
            )


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p) (scipy's survival function: stable for 10k subjects,
    where a sum of comb(n, i) p^i terms overflows)."""
    return float(scipy.stats.binom.sf(k - 1, n, p))


def combine_answers(
    answers: Sequence[SiteAnswer],
    *,
    config: AuditConfig,
    files: dict[str, str],
) -> dict[str, Any]:
    """Turn several sites' answers into the ``audit.json`` payload (nothing real-subject in it).

    Args:
        answers: one :class:`SiteAnswer` per site that trained.
        config: DCR tolerance/alpha and membership alpha (the steward's or coordinator's).
        files: relative path -> SHA-256 of every file of the audited synthetic cohort.
    """
    from fedcmr4d.audit.membership import combine_membership

    _check_answers(answers)
    k = len(answers)
    ids = answers[0].synthetic_ids
    reasons: list[str] = []
    flagged = [
        {"synthetic_id": ids[i], "site": a.site}
        for i in range(len(ids))
        for a in answers
        if a.copy_flags[i]
    ]
    if flagged:
        reasons.append(
            f"{len({f['synthetic_id'] for f in flagged})} synthetic subject(s) nearer to a "
            "training subject than unseen patients are, beyond chance (tail p-value below "
            "copy_alpha / (N * K))"
        )
    uncalibrated = [a.site for a in answers if not a.calibrated]
    if uncalibrated:
        reasons.append(
            f"site(s) {', '.join(uncalibrated)} could not calibrate the copy test (fewer than "
            f"{config.min_holdout} holdout subjects): the cohort is not audited there"
        )
    per_site = []
    for a in answers:
        wins = sum(a.dcr_bits)
        expected = a.n_train / (a.n_train + a.n_holdout)
        share = wins / len(ids) if ids else 0.0
        p_value = binomial_tail(wins, len(ids), expected) if ids else 1.0
        per_site.append((a, share, expected, p_value))
        if share > expected + config.dcr_tolerance and p_value < config.dcr_alpha / k:
            reasons.append(
                f"site {a.site}: dcr_share {share:.3f} exceeds dcr_expected {expected:.3f} + "
                f"tolerance {config.dcr_tolerance} (binomial p = {p_value:.2g} < "
                f"{config.dcr_alpha} / {k})"
            )
    dcr_share = float(np.mean([s for _, s, _, _ in per_site]))
    dcr_expected = float(np.mean([e for _, _, e, _ in per_site]))
    dcr_p_value = min(1.0, k * min(p for *_, p in per_site))
    membership = combine_membership([a.membership for a in answers], config)
    if membership is not None and membership["passed"] is False:
        reasons.append(membership["reason"])
    thresholds = [a.threshold for a in answers if a.threshold is not None]
    warnings = _dcr_warnings(len(ids), dcr_expected, config)
    for a in answers:
        if a.calibrated and a.n_holdout < 10:
            warnings.append(
                f"site {a.site}: {a.n_holdout} holdout subjects; the copy test's power is low "
                "below 10 (docs/steward.md, 'Power of the copy test')"
            )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "threshold": min(thresholds) if thresholds else None,
        "thresholds": sorted(thresholds),
        "n_synthetic": len(ids),
        "n_sites": k,
        "site_names": sorted(a.site for a in answers),
        "n_train": sum(a.n_train for a in answers),
        "n_holdout": sum(a.n_holdout for a in answers),
        "flagged": flagged,
        "dcr_share": dcr_share,
        "dcr_expected": dcr_expected,
        "dcr_p_value": dcr_p_value,
        "membership": membership,
        "method": {
            "name": METHOD_NAME,
            "distance": "1 - max normalised cross-correlation over cyclic frame shifts, "
            "in-plane shifts up to max_shift voxels, flips and rotations of the query, on the "
            "audit grid (all slices)",
            "grid": answers[0].method.get("grid", {}),
            "copy_alpha": answers[0].method.get("copy_alpha"),
            "dcr_tolerance": config.dcr_tolerance,
            "dcr_alpha": config.dcr_alpha,
            "membership_alpha": config.membership_alpha,
            "threshold_rule": "per site: the distance at which the predictive tail p-value of "
            "a Weibull fit to its holdout-to-train and training leave-one-out nearest distances "
            "equals copy_alpha / (N * K)",
            "flag_rule": "tail p-value of the nearest training distance < copy_alpha / (N * K) "
            "(Bonferroni over N synthetic subjects and K sites)",
            "pass_rule": "no flag, every site calibrated, no site with dcr_share > dcr_expected "
            "+ dcr_tolerance and binomial p < dcr_alpha / K, membership p >= membership_alpha",
            "dcr_p_value_rule": "min over sites of binomial P(X >= wins | N, dcr_expected_k), "
            "times K (capped at 1)",
        },
        "files": dict(sorted(files.items())),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fedcmr4d_version": __version__,
    }


def full_record(
    audit: dict[str, Any],
    answers: Sequence[SiteAnswer],
    details: dict[str, SiteDetail] | None = None,
) -> dict[str, Any]:
    """The steward's ``audit-full.json``: the public audit plus every site's answer (and, in the
    local form, the real distances). Never part of a release."""
    out = dict(audit)
    out["site_answers"] = [a.to_dict() for a in answers]
    if details:
        out["site_details"] = {name: asdict(d) for name, d in details.items()}
    return out


def _dcr_warnings(n_synthetic: int, dcr_expected: float, config: AuditConfig) -> list[str]:
    """Say when even a share of 1.0 could not fail the DCR test: it then has no power."""
    if n_synthetic == 0 or binomial_tail(n_synthetic, n_synthetic, dcr_expected) < config.dcr_alpha:
        return []
    needed = math.floor(math.log(config.dcr_alpha) / math.log(dcr_expected)) + 1
    return [
        f"only {n_synthetic} synthetic subjects: even all of them nearer to training than to "
        f"holdout subjects (probability {dcr_expected:.3f} each by chance) would not reach "
        f"dcr_alpha {config.dcr_alpha}, so the DCR share cannot fail this audit; sample at "
        f"least {needed} (more for the test to see a partial excess)"
    ]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def full_path(out: str | Path) -> Path:
    """``audit.json`` -> ``audit-full.json`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + FULL_SUFFIX + out.suffix)


def write_audit(
    audit: dict[str, Any],
    out: str | Path,
    *,
    full: dict[str, Any] | None = None,
    report: bool = True,
) -> Path:
    """Write ``audit.json`` (public), ``audit-full.json`` (steward only) and ``audit.html``."""
    out = Path(out)
    atomic_write_json(out, audit)
    if full is not None:
        atomic_write_json(full_path(out), full)
    if report:
        from fedcmr4d.audit.report import write_report

        write_report(audit, out.with_name(out.stem + ".html"))
    return out


def run_audit(
    synthetic_dir: str | Path,
    train_dirs: Sequence[str | Path],
    holdout_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    config: AuditConfig | None = None,
    site: str = "local",
    checkpoint: str | Path | None = None,
    report: bool = True,
    raise_on_fail: bool = False,
) -> dict[str, Any]:
    """Local audit: one site that pools every train and every holdout folder.

    Args:
        synthetic_dir: the synthetic cohort.
        train_dirs: real training cohorts (pooled as one site).
        holdout_dirs: real held-out cohorts (pooled).
        out: where to write ``audit.json`` (``audit-full.json`` and ``audit.html`` beside it).
        config: audit settings; defaults of :class:`AuditConfig` when ``None``.
        site: the name reported for flagged subjects.
        checkpoint: a stage-2 (or stage-1) checkpoint: adds the membership-inference test.
        report: also write the HTML report.
        raise_on_fail: raise :class:`AuditFailedError` (exit 4) after writing a failed audit.

    Raises:
        ConfigError: train and holdout share a subject id or an identical cine (exit 2).
    """
    from fedcmr4d.audit.split import check_disjoint

    config = config or AuditConfig()
    check_disjoint(train_dirs, holdout_dirs)
    synthetic = prepare_synthetic(synthetic_dir, config)
    train = _represent_dirs(train_dirs, synthetic.grid)
    if train.shape[0] == 0:
        names = ", ".join(str(d) for d in train_dirs) or "(none given)"
        raise InputError(f"site {site}: no training subjects in {names}")
    holdout = _represent_dirs(holdout_dirs, synthetic.grid)
    membership = None
    if checkpoint is not None:
        from fedcmr4d.audit.membership import membership_from_checkpoint

        membership = membership_from_checkpoint(checkpoint, train_dirs, holdout_dirs, config)
    answer, detail = site_answer_from_reps(
        synthetic.ids,
        synthetic.reps,
        train,
        holdout,
        grid=synthetic.grid,
        config=config,
        site=site,
        membership=membership,
    )
    audit = combine_answers([answer], config=config, files=synthetic.files)
    if out is not None:
        write_audit(audit, out, full=full_record(audit, [answer], {site: detail}), report=report)
    if raise_on_fail and not audit["passed"]:
        where = f" (see {out})" if out is not None else ""
        raise AuditFailedError(
            f"{synthetic_dir}: audit failed{where}: " + "; ".join(audit["reasons"])
        )
    return audit
