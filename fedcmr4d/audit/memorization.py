"""Memorization audit: nearest-neighbour distances, calibrated threshold, DCR share, audit.json.

Method (``shift_invariant_ncc``): every cine is mapped onto a small common grid
(:mod:`fedcmr4d.audit.features`) and two subjects are compared by ``1 - max NCC`` over every
cyclic shift of the cardiac phase and in-plane shifts up to ``audit.max_shift`` voxels
(:mod:`fedcmr4d.audit.distance`). A copy of a training subject stays near 0 through noise,
small translations, gamma changes and a rolled cycle; different subjects are far apart.

Federated shape (DESIGN.md, privacy model): each site runs :func:`site_audit` on its own train
and holdout cohorts and returns a :class:`SiteAuditResult` holding only distances, synthetic ids
and counts. :func:`combine_site_results` turns any number of them into ``audit.json``. The local
command is the combiner over one site.

Rules (recorded in ``audit.json`` under ``method``):

- ``threshold`` = the ``audit.percentile`` (default 1st) percentile, linear interpolation, of
  the pooled holdout-to-train nearest distances (each holdout subject against the training
  subjects of its own site). Nothing is a constant: the bar is what real unseen patients look
  like next to the training set.
- A synthetic subject is **flagged** when its distance to the nearest training subject (over
  all sites) is below ``threshold``; the entry names that site.
- ``dcr_share`` = fraction of synthetic subjects nearer to a training subject than to any
  holdout subject (ties count one half). Without memorization the nearest real subject is in
  the training set with probability ``dcr_expected = n_train / (n_train + n_holdout)`` (0.5
  when both sets are equally large). Memorization pushes the share up.
- ``dcr_p_value`` = one-sided binomial tail P(X >= wins | n_synthetic, dcr_expected), a tie
  counted as a win: how likely a share at least this high is from a model that memorised
  nothing. A handful of synthetic subjects gives 1.0 by chance (6 of 6 at ``dcr_expected``
  2/3: p = 0.088), so the share alone would refuse releases at random.
- ``passed`` = no subject flagged **and not** (``dcr_share > dcr_expected + audit.dcr_tolerance``
  **and** ``dcr_p_value < audit.dcr_alpha``): the excess must be both material (tolerance) and
  unlikely by chance (alpha). With too few synthetic subjects for any share to reach alpha the
  audit says so in ``warnings``. A share far *below* the expected value is not a memorization
  signal; it is reported (``dcr_low``) but does not fail the audit.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import scipy.stats
import torch

from fedcmr4d import __version__
from fedcmr4d.audit.distance import nearest
from fedcmr4d.audit.features import AuditGrid, represent_cohort
from fedcmr4d.config import AuditConfig
from fedcmr4d.data.cohort import CINE_FILE, open_cohort
from fedcmr4d.errors import AuditFailedError, InputError
from fedcmr4d.io import atomic_write_json, tree_hashes

METHOD_NAME = "shift_invariant_ncc"


@dataclass
class SyntheticSet:
    """The synthetic cohort prepared once for all sites.

    Attributes:
        ids: synthetic subject ids, in cohort order.
        reps: (N, slices, grid, grid, frames) audit representations (synthetic data only, so
            the coordinator may send them to sites instead of the cohort itself).
        grid: the audit grid every site must use.
        files: relative path -> SHA-256 of every file of the synthetic cohort.
    """

    ids: list[str]
    reps: torch.Tensor
    grid: AuditGrid
    files: dict[str, str]


@dataclass
class SiteAuditResult:
    """What one site reports: distances, synthetic ids and counts only; no real images or ids.

    Attributes:
        site: the site's name.
        n_train, n_holdout: sizes of the site's real cohorts.
        holdout_to_train: nearest training distance of each holdout subject (order unspecified).
        synthetic_ids: the synthetic ids the next two lists refer to.
        synthetic_to_train: nearest distance of each synthetic subject to this site's train set.
        synthetic_to_holdout: same, to this site's holdout set (``inf`` if it has none).
        grid: the audit grid parameters used.
    """

    site: str
    n_train: int
    n_holdout: int
    holdout_to_train: list[float]
    synthetic_ids: list[str]
    synthetic_to_train: list[float]
    synthetic_to_holdout: list[float]
    grid: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``inf`` becomes ``None``)."""
        out = asdict(self)
        for key in ("holdout_to_train", "synthetic_to_train", "synthetic_to_holdout"):
            out[key] = [None if not math.isfinite(v) else float(v) for v in out[key]]
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SiteAuditResult:
        """Parse and check a site's reply; raises :class:`InputError` naming the problem."""
        expected = set(cls.__dataclass_fields__)
        if set(payload) != expected:
            raise InputError(f"site audit result: keys {sorted(payload)} != {sorted(expected)}")

        def floats(key: str) -> list[float]:
            return [math.inf if v is None else float(v) for v in payload[key]]

        result = cls(
            site=str(payload["site"]),
            n_train=int(payload["n_train"]),
            n_holdout=int(payload["n_holdout"]),
            holdout_to_train=floats("holdout_to_train"),
            synthetic_ids=[str(v) for v in payload["synthetic_ids"]],
            synthetic_to_train=floats("synthetic_to_train"),
            synthetic_to_holdout=floats("synthetic_to_holdout"),
            grid=dict(payload["grid"]),
        )
        result.check()
        return result

    def check(self) -> None:
        n = len(self.synthetic_ids)
        if len(self.synthetic_to_train) != n or len(self.synthetic_to_holdout) != n:
            raise InputError(f"site {self.site}: distance lists do not match {n} synthetic ids")
        if len(self.holdout_to_train) != self.n_holdout:
            raise InputError(
                f"site {self.site}: {len(self.holdout_to_train)} holdout distances "
                f"for n_holdout={self.n_holdout}"
            )
        if self.n_train < 1:
            raise InputError(f"site {self.site}: no training subjects to audit against")


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
    """Hash, size and represent the synthetic cohort (done once, by whoever holds it)."""
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


def _represent_dirs(dirs: Sequence[str | Path], grid: AuditGrid) -> torch.Tensor:
    parts = [represent_cohort(open_cohort(d), grid)[1] for d in dirs]
    if not parts:
        return torch.zeros((0, grid.slices, grid.grid, grid.grid, grid.frames))
    return torch.cat(parts)


def site_audit(
    synthetic: SyntheticSet,
    train_dirs: Sequence[str | Path],
    holdout_dirs: Sequence[str | Path],
    *,
    site: str,
) -> SiteAuditResult:
    """One site's share of the audit, computed where its real data live.

    Args:
        synthetic: the prepared synthetic cohort (see :func:`prepare_synthetic`).
        train_dirs: the site's training cohorts (pooled).
        holdout_dirs: the site's held-out cohorts (pooled; never used in training).
        site: the site's name, reported with flagged subjects.

    Returns:
        Distances, synthetic ids and counts only.
    """
    train = _represent_dirs(train_dirs, synthetic.grid)
    if train.shape[0] == 0:
        names = ", ".join(str(d) for d in train_dirs) or "(none given)"
        raise InputError(f"site {site}: no training subjects in {names}")
    holdout = _represent_dirs(holdout_dirs, synthetic.grid)
    return site_audit_from_reps(
        synthetic.ids, synthetic.reps, train, holdout, grid=synthetic.grid, site=site
    )


def site_audit_from_reps(
    synthetic_ids: Sequence[str],
    synthetic_reps: torch.Tensor,
    train_reps: torch.Tensor,
    holdout_reps: torch.Tensor,
    *,
    grid: AuditGrid,
    site: str,
) -> SiteAuditResult:
    """The site computation on representations already made with ``grid``.

    For sites whose train/holdout split lives inside one cohort (the federated client):
    represent the split with :func:`fedcmr4d.audit.features.represent_cohort` (``subject_ids``)
    and call this; the search settings (shift, candidates) come from ``grid``.

    Args:
        synthetic_ids: ids of the synthetic subjects, in the order of ``synthetic_reps``.
        synthetic_reps: (N_s, slices, grid, grid, frames) synthetic representations.
        train_reps: (N_t, ...) the site's training subjects (N_t >= 1).
        holdout_reps: (N_h, ...) the site's held-out subjects (may be empty).
        grid: the audit grid all of them were made with.
        site: the site's name.
    """
    if train_reps.shape[0] == 0:
        raise InputError(f"site {site}: no training subjects to audit against")
    search = {"shift": grid.shift_grid, "candidates": grid.candidates}
    result = SiteAuditResult(
        site=site,
        n_train=int(train_reps.shape[0]),
        n_holdout=int(holdout_reps.shape[0]),
        holdout_to_train=nearest(holdout_reps, train_reps, **search).distance.tolist(),
        synthetic_ids=list(synthetic_ids),
        synthetic_to_train=nearest(synthetic_reps, train_reps, **search).distance.tolist(),
        synthetic_to_holdout=nearest(synthetic_reps, holdout_reps, **search).distance.tolist(),
        grid=grid.as_dict(),
    )
    result.check()
    return result


def _check_sites(results: Sequence[SiteAuditResult]) -> None:
    if not results:
        raise InputError("audit: no site results to combine")
    first = results[0]
    names = [r.site for r in results]
    if len(set(names)) != len(names):
        raise InputError(f"audit: duplicate site names {names}")
    for result in results[1:]:
        if result.synthetic_ids != first.synthetic_ids:
            raise InputError(f"site {result.site}: audited other synthetic ids than {first.site}")
        if result.grid != first.grid:
            raise InputError(f"site {result.site}: audit grid {result.grid} != {first.grid}")


def combine_site_results(
    results: Sequence[SiteAuditResult],
    *,
    config: AuditConfig,
    files: dict[str, str],
) -> dict[str, Any]:
    """Turn several sites' results into the ``audit.json`` payload.

    Args:
        results: one :class:`SiteAuditResult` per site (at least one).
        config: percentile and DCR tolerance (the grid is taken from the results).
        files: relative path -> SHA-256 of every file of the audited synthetic cohort.

    Returns:
        The audit dictionary; ``passed`` as defined in the module docstring.
    """
    _check_sites(results)
    holdout = np.array([d for r in results for d in r.holdout_to_train], dtype=np.float64)
    if holdout.size == 0:
        raise InputError("audit: no holdout subjects at any site; the threshold needs them")
    threshold = float(np.percentile(holdout, config.percentile))
    to_train = np.array([r.synthetic_to_train for r in results], dtype=np.float64)  # (sites, N)
    to_holdout = np.array([r.synthetic_to_holdout for r in results], dtype=np.float64)
    nearest_train = to_train.min(axis=0)
    nearest_site = to_train.argmin(axis=0)
    nearest_holdout = to_holdout.min(axis=0)
    ids = results[0].synthetic_ids
    flagged = [
        {
            "synthetic_id": ids[i],
            "distance": float(nearest_train[i]),
            "site": results[int(nearest_site[i])].site,
        }
        for i in np.argsort(nearest_train, kind="stable")
        if nearest_train[i] < threshold
    ]
    wins = np.where(
        nearest_train < nearest_holdout, 1.0, np.where(nearest_train == nearest_holdout, 0.5, 0.0)
    )
    dcr_share = float(wins.mean()) if wins.size else 0.0
    n_train = sum(r.n_train for r in results)
    n_holdout = sum(r.n_holdout for r in results)
    dcr_expected = n_train / (n_train + n_holdout)
    p_value = binomial_tail(math.ceil(float(wins.sum())), wins.size, dcr_expected)
    reasons = []
    if flagged:
        reasons.append(
            f"{len(flagged)} synthetic subject(s) nearer to a training subject than "
            f"the threshold {threshold:.6f}"
        )
    if dcr_share > dcr_expected + config.dcr_tolerance and p_value < config.dcr_alpha:
        reasons.append(
            f"dcr_share {dcr_share:.3f} exceeds dcr_expected {dcr_expected:.3f} + "
            f"tolerance {config.dcr_tolerance} (binomial p = {p_value:.2g} < {config.dcr_alpha})"
        )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "warnings": _warnings(holdout.size, config.percentile)
        + _dcr_warnings(len(ids), dcr_expected, config),
        "threshold": threshold,
        "n_synthetic": len(ids),
        "flagged": flagged,
        "dcr_share": dcr_share,
        "dcr_expected": dcr_expected,
        "dcr_p_value": p_value,
        "dcr_low": dcr_share < dcr_expected - config.dcr_tolerance,
        "method": {
            "name": METHOD_NAME,
            "distance": "1 - max normalised cross-correlation over cyclic frame shifts and "
            "in-plane shifts up to max_shift voxels, on the audit grid",
            "grid": results[0].grid,
            "percentile": config.percentile,
            "dcr_tolerance": config.dcr_tolerance,
            "dcr_alpha": config.dcr_alpha,
            "threshold_rule": "percentile (linear) of pooled holdout-to-own-site-train nearest "
            "distances",
            "flag_rule": "nearest training distance (all sites) < threshold",
            "pass_rule": "no flagged subject, and not (dcr_share > dcr_expected + dcr_tolerance "
            "and dcr_p_value < dcr_alpha)",
            "dcr_p_value_rule": "binomial P(X >= wins | n_synthetic, dcr_expected), ties as wins",
        },
        "sites": [
            {"site": r.site, "n_train": r.n_train, "n_holdout": r.n_holdout} for r in results
        ],
        "distances": {
            "holdout_to_train": [float(d) for d in np.sort(holdout)],
            "synthetic": [
                {
                    "synthetic_id": ids[i],
                    "nearest_train": _finite(nearest_train[i]),
                    "nearest_train_site": results[int(nearest_site[i])].site,
                    "nearest_holdout": _finite(nearest_holdout[i]),
                }
                for i in range(len(ids))
            ],
        },
        "files": dict(sorted(files.items())),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fedcmr4d_version": __version__,
    }


def _warnings(n_holdout: int, percentile: float) -> list[str]:
    """Caveats a steward should read even when the audit passed."""
    resolution = 100.0 / (n_holdout + 1)
    if resolution <= percentile:
        return []
    return [
        f"only {n_holdout} holdout subjects: the {percentile:g} percentile is not resolved, so "
        f"about {resolution:.1f} % of subjects that memorised nothing fall below the threshold; "
        f"use at least {int(round(100.0 / percentile)) - 1} holdout subjects over all sites"
    ]


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p) (scipy's survival function: stable for 10k subjects,
    where a sum of comb(n, i) p^i terms overflows)."""
    return float(scipy.stats.binom.sf(k - 1, n, p))


def _dcr_warnings(n_synthetic: int, dcr_expected: float, config: AuditConfig) -> list[str]:
    """Say when even a share of 1.0 could not fail the DCR test: it then has no power."""
    if n_synthetic == 0 or binomial_tail(n_synthetic, n_synthetic, dcr_expected) < config.dcr_alpha:
        return []
    # smallest n with dcr_expected ** n < alpha (0 < dcr_expected < 1: both sets are non-empty)
    needed = math.floor(math.log(config.dcr_alpha) / math.log(dcr_expected)) + 1
    return [
        f"only {n_synthetic} synthetic subjects: even all of them nearer to training than to "
        f"holdout subjects (probability {dcr_expected:.3f} each by chance) would not reach "
        f"dcr_alpha {config.dcr_alpha}, so the DCR share cannot fail this audit; sample at "
        f"least {needed} (more for the test to see a partial excess)"
    ]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def write_audit(audit: dict[str, Any], out: str | Path, *, report: bool = True) -> Path:
    """Write ``audit.json`` (atomically) and, by default, ``audit.html`` beside it."""
    out = Path(out)
    atomic_write_json(out, audit)
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
    report: bool = True,
    raise_on_fail: bool = False,
) -> dict[str, Any]:
    """Local audit: the combiner over one site that pools every train and holdout folder.

    Args:
        synthetic_dir: the synthetic cohort.
        train_dirs: real training cohorts (pooled as one site).
        holdout_dirs: real held-out cohorts (pooled).
        out: where to write ``audit.json`` (and ``audit.html`` beside it); ``None``: don't.
        config: audit settings; defaults of :class:`AuditConfig` when ``None``.
        site: the name reported for flagged subjects.
        report: also write the HTML report.
        raise_on_fail: raise :class:`AuditFailedError` (exit 4) after writing a failed audit.

    Returns:
        The audit dictionary.
    """
    config = config or AuditConfig()
    synthetic = prepare_synthetic(synthetic_dir, config)
    result = site_audit(synthetic, train_dirs, holdout_dirs, site=site)
    audit = combine_site_results([result], config=config, files=synthetic.files)
    if out is not None:
        write_audit(audit, out, report=report)
    if raise_on_fail and not audit["passed"]:
        where = f" (see {out})" if out is not None else ""
        raise AuditFailedError(
            f"{synthetic_dir}: audit failed{where}: " + "; ".join(audit["reasons"])
        )
    return audit
