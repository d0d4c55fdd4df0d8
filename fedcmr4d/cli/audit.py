"""CLI command: ``fedcmr4d audit`` (memorization audit, local form; exit 0 passed, 4 failed)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.config import AuditConfig, config_from_dict, load_config, parse_override
from fedcmr4d.errors import AuditFailedError, ConfigError


@app.command()
def audit(
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic cohort folder."),
    train: list[Path] = typer.Option(..., "--train", help="Real training cohort (repeatable)."),
    holdout: list[Path] = typer.Option(..., "--holdout", help="Real held-out cohort (repeatable)."),
    out: Path = typer.Option(..., "--out", help="audit.json to write (audit.html beside it)."),
    config: str | None = typer.Option(
        None, "--config", help="Config name or YAML; its `audit:` section is used."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override, e.g. audit.copy_alpha=0.01."),
    site: str = typer.Option("local", "--site", help="Site name reported for flagged subjects."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Stage-2 (or stage-1) checkpoint: adds membership inference."
    ),
) -> None:
    """Memorization audit (local form): exit 0 passed, 4 failed, 2 overlapping split.

    Every `--train` folder is pooled into one training set and every `--holdout` folder into
    one holdout set; sets that share a subject id or an identical cine are refused (write them
    with `fedcmr4d split`). A synthetic subject is flagged when its nearest training distance
    is unlikely for an unseen patient (tail p-value of the holdout distances below
    `audit.copy_alpha` / N). The DCR share fails the audit when it exceeds its no-memorization
    value by `audit.dcr_tolerance` and its binomial p-value is below `audit.dcr_alpha`; with
    `--checkpoint`, membership inference on the model's loss fails it below
    `audit.membership_alpha`. `audit.json` holds no real-subject distance; `audit-full.json`
    beside it does (it stays with the steward).
    """
    from fedcmr4d.audit.memorization import run_audit

    audit_config = load_config(config, overrides).audit if config else _audit_overrides(overrides)
    result = run_audit(
        synthetic,
        train,
        holdout,
        out,
        config=audit_config,
        site=site,
        checkpoint=checkpoint,
        raise_on_fail=False,
    )
    verdict = "passed" if result["passed"] else "FAILED"
    threshold = "n/a" if result["threshold"] is None else f"{result['threshold']:.6f}"
    membership = result.get("membership")
    member = (
        f", membership AUC {membership['auc']:.3f} (p {membership['p_value']:.2g})"
        if membership
        else ""
    )
    typer.echo(
        f"audit {verdict}: {result['n_synthetic']} synthetic, {len(result['flagged'])} flagged, "
        f"threshold {threshold}, dcr_share {result['dcr_share']:.3f} "
        f"(expected {result['dcr_expected']:.3f}, p {result['dcr_p_value']:.2g}){member}; "
        f"wrote {out}"
    )
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    if not result["passed"]:
        raise AuditFailedError(f"{out}: audit failed: " + "; ".join(result["reasons"]))


def _audit_overrides(overrides: list[str]) -> AuditConfig:
    """Defaults of :class:`AuditConfig` with ``--set audit.*`` applied and validated."""
    tree: dict[str, dict[str, object]] = {"audit": {}}
    for item in overrides:
        key, value = parse_override(item)
        section, _, name = key.partition(".")
        if section != "audit" or not name or "." in name:
            raise ConfigError(f"--set {item}: without --config only audit.<key> can be set")
        tree["audit"][name] = value
    return config_from_dict(tree, "--set").audit
