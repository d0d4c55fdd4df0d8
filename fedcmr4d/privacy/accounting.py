"""One privacy ledger per site: every DP-SGD step of every stage and round, and ε at δ.

A site keeps a single :class:`SiteAccountant` across both stages and all federated rounds, so
that the ε it reports covers everything that left it. The ledger is a list of *segments* (runs of
steps with the same stage, sample rate, noise multiplier and clip bound); ε is always recomputed
by replaying the segments into a fresh Opacus accountant, so the saved state (JSON) is the whole
truth and a restart cannot lose or double-count steps.

``privacy.json`` (DESIGN.md)::

    {"epsilon": float, "delta": float, "accountant": "rdp"|"prv"|"gdp",
     "segments": [{"stage", "sample_rate", "noise_multiplier", "steps", "max_grad_norm"}],
     ...}
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opacus.accountants import IAccountant, create_accountant

from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.io import atomic_write_json, atomic_write_text, sha256_file

PRIVACY_FILE = "privacy.json"
LEDGER_DIR = ".fedcmr4d"  # inside the cohort folder: the ledger travels with the data it covers
LEDGER_FILE = "privacy-ledger.json"
MARKER_FILE = "ledger-created"
STATE_VERSION = 1
ACCOUNTANTS = ("rdp", "prv", "gdp")


@dataclass
class Segment:
    """Consecutive DP steps that share one mechanism (what an accountant needs, plus labels)."""

    stage: str
    sample_rate: float
    noise_multiplier: float
    steps: int
    max_grad_norm: float

    def same_mechanism(self, stage: str, q: float, sigma: float, clip: float) -> bool:
        return (self.stage, self.sample_rate, self.noise_multiplier, self.max_grad_norm) == (
            stage,
            q,
            sigma,
            clip,
        )


def default_delta(n_subjects: int) -> float:
    """δ = 1 / (10 N): well below 1/N, the level at which one subject's record may leak whole."""
    if n_subjects < 1:
        raise InputError("privacy: the cohort has no training subjects, δ = 1/(10 N) is undefined")
    return 1.0 / (10.0 * n_subjects)


def fresh_accountant(kind: str) -> IAccountant:
    """A new Opacus accountant of ``kind`` (``rdp``, ``prv`` or ``gdp``)."""
    if kind not in ACCOUNTANTS:
        raise ConfigError(f"privacy.accountant: must be one of {ACCOUNTANTS} (got {kind!r})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GDP warns on construction; the docs say when to use it
        return create_accountant(mechanism=kind)


def epsilon_of(segments: list[Segment], delta: float, kind: str) -> float:
    """ε at ``delta`` for all ``segments`` composed, by Opacus's accountant ``kind``.

    A segment with σ = 0 releases an unnoised gradient: ε is infinite.
    """
    active = [s for s in segments if s.steps > 0]
    if not active:
        return 0.0
    if any(s.noise_multiplier <= 0 for s in active):
        return math.inf
    if kind == "gdp" and len({(s.noise_multiplier, s.sample_rate) for s in active}) > 1:
        raise ConfigError(
            "privacy.accountant: 'gdp' supports one noise multiplier and sample rate only; "
            "this site's segments differ (stages or rounds) - use 'rdp' or 'prv'"
        )
    accountant = fresh_accountant(kind)
    accountant.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in active]
    if kind == "gdp":
        accountant.history = [
            (active[0].noise_multiplier, active[0].sample_rate, sum(s.steps for s in active))
        ]
    return float(accountant.get_epsilon(delta=delta))


class SiteAccountant:
    """The site's privacy ledger: segments of DP steps, δ, and the accountant that gives ε.

    Args:
        accountant: Opacus accountant kind, ``rdp`` (default), ``prv`` or ``gdp``.
        delta: the δ at which ε is reported (DESIGN: ``target_delta`` or 1/(10 N)).
        target_epsilon: the site's budget; :mod:`fedcmr4d.privacy.budget` refuses plans past it.
        state_path: where :meth:`save` writes the ledger (JSON); ``None`` keeps it in memory.
    """

    def __init__(
        self,
        *,
        accountant: str,
        delta: float,
        target_epsilon: float,
        state_path: str | Path | None = None,
    ) -> None:
        fresh_accountant(accountant)  # validates the kind early, with the config key in the error
        if not 0 < delta < 1:
            raise ConfigError(f"privacy.target_delta: must be in (0, 1) (got {delta})")
        self.kind = accountant
        self.delta = float(delta)
        self.target_epsilon = float(target_epsilon)
        self.state_path = Path(state_path) if state_path is not None else None
        self.segments: list[Segment] = []
        self.derived_noise: dict[str, float] = {}  # stage -> σ derived from the budget, kept
        self.cohort_id: str | None = None  # SHA-256 of the cohort.json this ledger covers
        self.marker_path: Path | None = None  # written with the first save (see open_cohort_ledger)

    def step(
        self, *, stage: str, sample_rate: float, noise_multiplier: float, max_grad_norm: float
    ) -> None:
        """Record one DP optimizer step (one Poisson-sampled batch, clipped and noised)."""
        last = self.segments[-1] if self.segments else None
        if last is not None and last.same_mechanism(
            stage, sample_rate, noise_multiplier, max_grad_norm
        ):
            last.steps += 1
        else:
            self.segments.append(
                Segment(stage, float(sample_rate), float(noise_multiplier), 1, float(max_grad_norm))
            )

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.segments)

    def epsilon(self, extra: list[Segment] | None = None) -> float:
        """ε at :attr:`delta` over all recorded segments (plus ``extra`` planned ones)."""
        return epsilon_of(self.segments + list(extra or []), self.delta, self.kind)

    def report(self) -> dict[str, Any]:
        """The ``privacy.json`` content (DESIGN.md), ε over all segments together."""
        eps = self.epsilon()
        return {
            "epsilon": eps if math.isfinite(eps) else None,
            "epsilon_finite": math.isfinite(eps),
            "delta": self.delta,
            "accountant": self.kind,
            "target_epsilon": self.target_epsilon,
            "privacy_unit": "subject",
            "segments": [asdict(s) for s in self.segments],
            "derived_noise_multiplier": dict(self.derived_noise),
            "cohort_id": self.cohort_id,
        }

    def metrics(self) -> dict[str, float]:
        """``{"epsilon", "delta"}`` for per-round metrics and checkpoint meta (inf if σ = 0)."""
        return {"epsilon": self.epsilon(), "delta": self.delta}

    # --- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self.report()}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the ledger atomically (to ``path`` or :attr:`state_path`) and return the path."""
        target = Path(path) if path is not None else self.state_path
        if target is None:
            raise ValueError("SiteAccountant.save: no path given and no state_path set")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target, self.state_dict())
        if self.marker_path is not None and target == self.state_path:
            if not self.marker_path.exists():
                atomic_write_text(self.marker_path, f"{self.cohort_id}\n")
        return target

    def write_report(self, out_dir: str | Path) -> Path:
        """Write ``<out_dir>/privacy.json``."""
        return self.save(Path(out_dir) / PRIVACY_FILE)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        accountant: str | None = None,
        delta: float | None = None,
        target_epsilon: float | None = None,
        state_path: str | Path | None = None,
    ) -> SiteAccountant:
        """Restore a ledger from its JSON; the saved accountant and δ win unless they conflict.

        Raises:
            InputError: the file is unreadable, malformed, or was kept at a different δ or with
                a different accountant than the one configured now (mixing them would make the
                reported ε meaningless).
        """
        path = Path(path)
        try:
            state = json.loads(path.read_text())
            kind = str(state["accountant"])
            saved_delta = float(state["delta"])
            segments = [
                Segment(
                    stage=str(s["stage"]),
                    sample_rate=float(s["sample_rate"]),
                    noise_multiplier=float(s["noise_multiplier"]),
                    steps=int(s["steps"]),
                    max_grad_norm=float(s["max_grad_norm"]),
                )
                for s in state["segments"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a readable privacy ledger ({exc})") from None
        if accountant is not None and accountant != kind:
            raise InputError(
                f"{path}: ledger was kept with accountant '{kind}', config asks for '{accountant}'"
            )
        if delta is not None and not math.isclose(delta, saved_delta, rel_tol=1e-12):
            raise InputError(
                f"{path}: ledger reports ε at δ={saved_delta:g}, config asks for δ={delta:g}; "
                "keep one δ per site"
            )
        budget = target_epsilon if target_epsilon is not None else state.get("target_epsilon")
        ledger = cls(
            accountant=kind,
            delta=saved_delta,
            target_epsilon=float(budget if budget is not None else math.inf),
            state_path=state_path if state_path is not None else path,
        )
        ledger.segments = segments
        derived = state.get("derived_noise_multiplier") or {}
        ledger.derived_noise = {str(k): float(v) for k, v in derived.items()}
        cohort_id = state.get("cohort_id")
        ledger.cohort_id = str(cohort_id) if cohort_id else None
        return ledger


def cohort_identity(cohort_dir: str | Path) -> str:
    """The cohort's identity: SHA-256 of its ``cohort.json`` (subjects, spacing, provenance)."""
    index = Path(cohort_dir) / "cohort.json"
    if not index.is_file():
        raise InputError(f"{index}: missing; a privacy ledger belongs to a cohort folder")
    return sha256_file(index)


def cohort_ledger_path(cohort_dir: str | Path) -> Path:
    """``<cohort>/.fedcmr4d/privacy-ledger.json``: the one ledger of this cohort."""
    return Path(cohort_dir) / LEDGER_DIR / LEDGER_FILE


def open_cohort_ledger(
    cohort_dir: str | Path, *, accountant: str, delta: float, target_epsilon: float
) -> SiteAccountant:
    """The cohort's ledger, shared by local ``fedcmr4d train`` runs and federated rounds.

    A new ledger is created only for a cohort that never had one. Refused (InputError): a
    ledger whose cohort identity differs from the folder's ``cohort.json`` (the data changed
    under it), and a missing ledger where ``.fedcmr4d/ledger-created`` says one existed (a
    deleted or lost ledger would restart ε at 0). A new dataset is a new cohort folder
    (``fedcmr4d preprocess --out NEW``), which gets its own ledger.
    """
    path = cohort_ledger_path(cohort_dir)
    marker = path.parent / MARKER_FILE
    identity = cohort_identity(cohort_dir)
    if path.is_file():
        ledger = SiteAccountant.load(
            path, accountant=accountant, delta=delta, target_epsilon=target_epsilon
        )
        if ledger.cohort_id != identity:
            raise InputError(
                f"{path}: this privacy ledger belongs to cohort {ledger.cohort_id}, but "
                f"{Path(cohort_dir) / 'cohort.json'} now hashes to {identity}; refusing to mix "
                "budgets. A new dataset needs a new cohort folder (docs/privacy.md, Resetting)"
            )
    elif marker.exists():
        raise InputError(
            f"{path}: missing, but {marker} says this cohort's ledger was created; refusing to "
            "start again at ε = 0. Restore the ledger from backup (docs/privacy.md, Resetting)"
        )
    else:
        ledger = SiteAccountant(
            accountant=accountant, delta=delta, target_epsilon=target_epsilon, state_path=path
        )
        ledger.cohort_id = identity
    ledger.marker_path = marker
    return ledger
