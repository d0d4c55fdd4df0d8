"""``fedcmr4d demo``: a whole consortium on one machine, from phantoms to a verified release.

Steps (each prints progress):

1. three phantom sites whose scanners differ (vendors A, B, C: contrast, bias field, noise) and
   a separate phantom reference cohort for the evaluation (never trained on);
2. Flower Simulation Engine, in process: stage 1 (VQ-VAE), stage 2 (latent diffusion) and the
   segmenter federated across the three sites, then the federated memorization audit of a
   synthetic cohort sampled from the stage-2 model and labelled by the federated segmenter
   (under DP the segmenter stage is left out and the cohort stays unlabelled);
3. an Ed25519 key pair (unencrypted: a demo key), the signed release (refused if the audit
   failed) and its verification;
4. the evaluation report of the synthetic cohort against the reference cohort, with the
   utility of the labelled synthetic cohort: site A trains the segmenter on its own phantoms,
   on the synthetic cohort and on both, and tests each on the reference cohort (in a real
   federation a site runs ``fedcmr4d utility`` on its own data and only the scores leave).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcmr4d.config import Config
from fedcmr4d.data.phantom import write_phantom_cohort
from fedcmr4d.errors import AuditFailedError, ConfigError
from fedcmr4d.federated.settings import RunSettings
from fedcmr4d.federated.simulation import run_simulated_federation, simulation_backend

VENDORS = ("A", "B", "C")
Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoPreset:
    """The sizes of one kind of demo run (``fedcmr4d demo`` or ``fedcmr4d demo --quick``)."""

    config: str
    subjects_per_site: int
    synthetic_subjects: int
    reference_subjects: int
    rounds_autoencoder: int  # -1: the config's federation.rounds_autoencoder
    rounds_diffusion: int


QUALITY = DemoPreset("demo", 96, 24, 24, -1, -1)
"""The default (``--quality``): the demo recipe (docs/models.md: its time and figures)."""
QUICK = DemoPreset("tiny", 6, 6, 6, 3, 3)
"""``--quick``: every step in about a minute, for tests and CI; the samples are noise."""


@dataclass
class DemoOptions:
    """What ``fedcmr4d demo`` was asked to do (fields left None take the preset's value)."""

    out: Path
    quick: bool = False
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    subjects_per_site: int | None = None
    synthetic_subjects: int | None = None
    reference_subjects: int | None = None
    seed: int = 0
    rounds_autoencoder: int | None = None
    rounds_diffusion: int | None = None
    evaluate: bool = True

    def resolved(self) -> DemoOptions:
        """A copy with every None replaced by the preset's value (QUICK or QUALITY)."""
        preset = QUICK if self.quick else QUALITY

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return DemoOptions(
            out=self.out,
            quick=self.quick,
            config=pick(self.config, preset.config),
            overrides=list(self.overrides),
            subjects_per_site=pick(self.subjects_per_site, preset.subjects_per_site),
            synthetic_subjects=pick(self.synthetic_subjects, preset.synthetic_subjects),
            reference_subjects=pick(self.reference_subjects, preset.reference_subjects),
            seed=self.seed,
            rounds_autoencoder=pick(self.rounds_autoencoder, preset.rounds_autoencoder),
            rounds_diffusion=pick(self.rounds_diffusion, preset.rounds_diffusion),
            evaluate=self.evaluate,
        )


@dataclass
class DemoResult:
    """Paths and figures the summary table shows."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0


def _check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not empty; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)


def write_sites(options: DemoOptions, cfg: Config, say: Say) -> Path:
    """Phantom site cohorts under ``out/sites`` (one per vendor) and ``out/reference``.

    ``options`` must be resolved (:meth:`DemoOptions.resolved`).
    """
    assert options.subjects_per_site is not None and options.reference_subjects is not None
    size, slices, frames = cfg.data.image_size, cfg.data.slices, cfg.data.frames
    root = options.out / "sites"
    for i, vendor in enumerate(VENDORS):
        write_phantom_cohort(
            root / f"site-{vendor}",
            options.subjects_per_site,
            options.seed * 10 + i + 1,
            vendor=vendor,
            id_prefix=f"site{vendor}-",
            image_size=size,
            slices=slices,
            frames=frames,
        )
        say(f"  site-{vendor}: {options.subjects_per_site} phantom subjects, vendor {vendor}")
    write_phantom_cohort(
        options.out / "reference",
        options.reference_subjects,
        options.seed * 10 + 9,
        id_prefix="ref-",
        image_size=size,
        slices=slices,
        frames=frames,
    )
    say(f"  reference: {options.reference_subjects} phantom subjects (evaluation only)")
    return root


def demo_site_policies(cfg: Config) -> dict[int, dict[str, Any]]:
    """Each phantom site's own policy (the demo plays every site): DP configs get a DP policy."""
    p = cfg.privacy
    if not p.enabled:
        return {}
    policy = {
        "require-dp": True,
        "target-epsilon": p.target_epsilon,
        "max-grad-norm": p.max_grad_norm,
        "accountant": p.accountant,
    }
    return {i: dict(policy) for i in range(len(VENDORS))}


def run_demo(options: DemoOptions, say: Say) -> DemoResult:
    """Run every step; return what the summary table shows."""
    started = time.monotonic()
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    options = options.resolved()
    assert options.config is not None and options.synthetic_subjects is not None
    assert options.rounds_autoencoder is not None and options.rounds_diffusion is not None
    out = options.out
    _check_out(out)
    settings = RunSettings(
        config=options.config,
        overrides=";".join(options.overrides),
        stages="autoencoder,diffusion,segmenter,audit",
        rounds_autoencoder=options.rounds_autoencoder,
        rounds_diffusion=options.rounds_diffusion,
        out_dir=str(out / "federation"),
        cohort_root=str(out / "sites"),
        state_root=str(out / "site-state"),
        synthetic_subjects=options.synthetic_subjects,
    )
    cfg = settings.load()
    result = DemoResult()
    say(
        f"[1/4] phantom consortium ({cfg.data.image_size} px, {cfg.data.slices} slices, "
        f"{cfg.data.frames} frames)"
    )
    write_sites(options, cfg, say)
    say("[2/4] federated training with Flower's Simulation Engine (3 sites, in process)")
    state = run_simulated_federation(
        settings,
        progress=lambda line: say(f"  {line}"),
        # One single-threaded ClientApp per site, all three at once (on 2 cores the OS shares
        # them: 1.5x a site's time per round instead of 2x with the third site waiting).
        backend_config=simulation_backend(num_cpus=1, total_cpus=len(VENDORS)),
        node_configs=demo_site_policies(cfg),
    )
    fed = Path(settings.out_dir)
    segmenter = fed / "segmenter"  # the federated segmenter, when that stage ran
    _federation_rows(result, state.history, fed)

    say("[3/4] signed release")
    _release(result, fed, out, say)

    if options.evaluate:
        say("[4/4] evaluation against the reference cohort")
        from fedcmr4d.evaluate.pipeline import evaluate_cohorts

        utility = _utility(out, fed, cfg, say)
        metrics = evaluate_cohorts(
            fed / "synthetic",
            out / "reference",
            out / "evaluation",
            # the labels' segmenter for both
            segmenter_dir=segmenter if (segmenter / "meta.json").is_file() else None,
            cfg=cfg,
            utility=utility,
        )
        result.report = Path(metrics["report"])
        result.rows.extend(evaluation_rows(metrics))
        result.rows.extend(utility_rows(utility or {}))
    result.seconds = time.monotonic() - started
    return result


def evaluation_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The quality figures of the summary table (docs/evaluation.md defines each)."""
    m = metrics.get("fid_matched_subjects")
    return [
        (
            "FID ratio",
            _fmt(metrics.get("fid_ratio")),
            f"synthetic-real {_fmt(metrics.get('fid_matched_mean'))} / real-real "
            f"{_fmt(metrics.get('fid_real_real_mean'))} ({m} vs {m} subjects a side)",
        ),
        (
            "EF W1",
            _fmt(metrics.get("ef_w1")),
            f"EF points; mean real {_fmt(metrics.get('ef_real_mean'))} / synthetic "
            f"{_fmt(metrics.get('ef_synthetic_mean'))}; LV found in "
            f"{metrics.get('ef_synthetic_found')} of {metrics.get('n_synthetic')}",
        ),
        (
            "EF sd ratio",
            _fmt(metrics.get("ef_std_ratio")),
            f"sd synthetic {_fmt(metrics.get('ef_synthetic_std'))} / real "
            f"{_fmt(metrics.get('ef_real_std'))}",
        ),
        (
            "sharpness ratio",
            _fmt(metrics.get("sharpness_ratio")),
            f"edge steepness synthetic {_fmt(metrics.get('sharpness_synthetic_mean'))} / real "
            f"{_fmt(metrics.get('sharpness_real_mean'))} per mm (1 = as sharp)",
        ),
    ]


def _utility(out: Path, fed: Path, cfg: Config, say: Say) -> dict[str, Any] | None:
    """Train-on-synthetic utility at site A, tested on the reference cohort; None if unlabelled."""
    from fedcmr4d.data.cohort import open_cohort
    from fedcmr4d.evaluate.utility import run_utility

    if not (open_cohort(fed / "synthetic").index.get("provenance") or {}).get("labels"):
        say("  utility: skipped (the synthetic cohort has no labels)")
        return None
    if cfg.privacy.enabled:
        # Arms (a) and (c) train a segmenter on site A's phantoms without DP-SGD: their scores
        # would leave the site outside its budget.
        say("  utility: skipped (DP run: the real arms' scores are not covered by the sites' ε)")
        return None
    say("  utility: site-A trains the segmenter on its phantoms / the synthetic cohort / both")
    metrics = run_utility(
        out / "sites" / "site-A", fed / "synthetic", out / "reference", out / "utility", cfg=cfg
    )
    return dict(metrics["utility"])


def utility_rows(utility: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One summary row per utility arm: mean Dice (with its sd and its gap to arm (a) when
    several seeds ran), the structures' Dice and the EF error."""
    rows = []
    for arm, row in utility.items():
        seeds = len(row.get("per_seed") or [None])
        dice = f"Dice {_fmt(row.get('dice_mean'))}"
        if row.get("dice_mean_sd") is not None:
            dice += f" +- {_fmt(row['dice_mean_sd'])} ({seeds} seeds)"
        detail = (
            f"LV / myo / RV {_fmt(row.get('dice_lv'))} / {_fmt(row.get('dice_myo'))} / "
            f"{_fmt(row.get('dice_rv'))}; EF MAE {_fmt(row.get('ef_mae'))} points "
            f"({row.get('train_subjects')} training subjects)"
        )
        if row.get("dice_mean_vs_real") is not None:
            detail += (
                f"; vs real {row['dice_mean_vs_real']:+.3f}, at or above it in "
                f"{row['seeds_at_or_above_real']} of {seeds} seeds"
            )
        rows.append((f"utility: {arm}", dice, detail))
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _federation_rows(result: DemoResult, history: list[dict[str, Any]], fed: Path) -> None:
    for row in history:
        train = row["train"]
        # Under DP a site sends no loss (it is not covered by ε): show the ε it reported.
        figure = (
            f"loss {_fmt(train['loss'])}"
            if "loss" in train
            else f"epsilon {_fmt(train.get('epsilon'))}"
        )
        result.rows.append(
            (
                f"{row['stage']} round {row['round']}",
                f"{row['sites_accepted']}/{row['sites_replied']} sites",
                f"{figure}, {row['bytes_to_sites'] + row['bytes_from_sites']:,} bytes",
            )
        )
    import json

    audit = json.loads((fed / "audit.json").read_text())
    verdict = "passed" if audit["passed"] else "FAILED"
    result.rows.append(
        (
            "audit",
            verdict,
            f"{audit['n_synthetic']} synthetic, {len(audit['flagged'])} flagged, "
            f"dcr_share {audit['dcr_share']:.2f} (p {audit['dcr_p_value']:.2g})",
        )
    )


def _release(result: DemoResult, fed: Path, out: Path, say: Say) -> None:
    from fedcmr4d.release.export import build_release
    from fedcmr4d.release.sign import generate_keypair
    from fedcmr4d.release.verify import verify_release

    private, public = generate_keypair(out / "keys", None, allow_unencrypted=True)
    say(f"  demo signing key (unencrypted, demo only): {public}")
    try:
        release = build_release(fed / "synthetic", fed / "audit.json", private, out / "release")
    except AuditFailedError as exc:
        say(f"  release refused: {exc}")
        result.rows.append(("release", "refused", str(exc)[:80]))
        return
    verified = verify_release(release, public)
    say(f"  verified {verified.n_files} files, signer {verified.signer[:23]}...")
    result.rows.append(("release", "verified", f"{verified.n_files} files in {release}"))
