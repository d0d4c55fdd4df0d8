"""CLI commands: ``audit``, ``keygen``, ``release``, ``verify`` (the data steward's tools).

Exit codes (DESIGN.md): ``audit`` 0 passed / 4 failed; ``release`` 0 / 4 refused (failed or
non-matching audit); ``verify`` 0 valid / 5 invalid; 2 usage, 3 unreadable input.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.config import AuditConfig, config_from_dict, load_config, parse_override
from fedcmr4d.errors import AuditFailedError, ConfigError
from fedcmr4d.release.sign import PASSPHRASE_ENV, private_key_is_encrypted


@app.command()
def audit(
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic cohort folder."),
    train: list[Path] = typer.Option(..., "--train", help="Real training cohort (repeatable)."),
    holdout: list[Path] = typer.Option(..., "--holdout", help="Real held-out cohort (repeatable)."),
    out: Path = typer.Option(..., "--out", help="audit.json to write (audit.html beside it)."),
    config: str | None = typer.Option(
        None, "--config", help="Config name or YAML; its `audit:` section is used."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override, e.g. audit.percentile=5."),
    site: str = typer.Option("local", "--site", help="Site name reported for flagged subjects."),
) -> None:
    """Memorization audit (local form): exit 0 passed, 4 failed.

    Every `--train` folder is pooled into one training set and every `--holdout` folder into
    one holdout set. A synthetic subject nearer to a training subject than the
    `audit.percentile` percentile of holdout-to-train distances is flagged. The DCR share
    (synthetic subjects nearer to train than to holdout) fails the audit when it exceeds its
    no-memorization value by `audit.dcr_tolerance` and its binomial p-value is below
    `audit.dcr_alpha`. Warnings (too few holdout or synthetic subjects) are printed.
    """
    from fedcmr4d.release.audit import run_audit

    audit_config = load_config(config, overrides).audit if config else _audit_overrides(overrides)
    result = run_audit(
        synthetic, train, holdout, out, config=audit_config, site=site, raise_on_fail=False
    )
    verdict = "passed" if result["passed"] else "FAILED"
    typer.echo(
        f"audit {verdict}: {result['n_synthetic']} synthetic, {len(result['flagged'])} flagged, "
        f"threshold {result['threshold']:.6f}, dcr_share {result['dcr_share']:.3f} "
        f"(expected {result['dcr_expected']:.3f}, p {result['dcr_p_value']:.2g}); wrote {out}"
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


def _passphrase(confirm: bool) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    return str(typer.prompt("Key passphrase", hide_input=True, confirmation_prompt=confirm))


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Folder for signing.key and signing.pub."),
    no_passphrase: bool = typer.Option(
        False, "--no-passphrase", help="Write the private key UNENCRYPTED (explicit opt-in)."
    ),
) -> None:
    """Create an Ed25519 key pair; the private key is encrypted with a passphrase.

    The passphrase comes from `FEDCMR4D_KEY_PASSPHRASE` or a prompt. Existing key files are
    never overwritten. Publish `signing.pub`; keep `signing.key` with the data steward.
    """
    from fedcmr4d.release.sign import fingerprint, generate_keypair, load_public_key

    passphrase = None if no_passphrase else _passphrase(confirm=True)
    private_path, public_path = generate_keypair(out, passphrase, allow_unencrypted=no_passphrase)
    typer.echo(
        f"wrote {private_path} ({'unencrypted' if no_passphrase else 'encrypted'}) and "
        f"{public_path}; fingerprint {fingerprint(load_public_key(public_path))}"
    )


@app.command("release")
def release_command(
    synthetic: Path = typer.Option(..., "--synthetic", help="The audited synthetic cohort."),
    audit_file: Path = typer.Option(..., "--audit", help="Its audit.json."),
    key: Path = typer.Option(..., "--key", help="signing.key (Ed25519, PKCS8 PEM)."),
    out: Path = typer.Option(..., "--out", help="Release folder to create (must not exist)."),
) -> None:
    """Build a signed release: exit 0, or 4 when the audit failed or no longer matches.

    Writes `cohort/`, `audit.json`, `provenance.json`, `DATASHEET.md`, `manifest.json` and
    `manifest.sig` into a temporary folder beside `--out` and renames it at the end.
    """
    from fedcmr4d.release.export import build_release

    passphrase = _passphrase(confirm=False) if private_key_is_encrypted(key) else None
    path = build_release(synthetic, audit_file, key, out, passphrase=passphrase)
    typer.echo(f"release written to {path}")


@app.command()
def verify(
    release_dir: Path = typer.Argument(..., help="The release folder."),
    public_key: Path = typer.Option(..., "--public-key", help="The publisher's signing.pub."),
) -> None:
    """Verify a release offline: exit 0 valid, 5 invalid (naming the first bad file)."""
    from fedcmr4d.release.verify import verify_release

    result = verify_release(release_dir, public_key)
    typer.echo(f"valid: {result.n_files} files, signed by {result.signer}")
