"""CLI commands: ``keygen``, ``release``, ``verify`` (the data steward's signing tools).

Exit codes (DESIGN.md): ``release`` 0 / 4 refused (failed or
non-matching audit); ``verify`` 0 valid / 5 invalid; 2 usage, 3 unreadable input.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fedcmr4d.cli import app
from fedcmr4d.release.sign import PASSPHRASE_ENV, private_key_is_encrypted


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
