"""Ed25519 key generation: encrypted by default, explicit opt-in for plain, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from fedcmr4d.errors import ConfigError, InputError
from fedcmr4d.release.sign import (
    PASSPHRASE_ENV,
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_bytes,
    signature_valid,
)


def test_encrypted_key_round_trip(tmp_path: Path):
    private_path, public_path = generate_keypair(tmp_path, "correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in private_path.read_bytes()
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    key = load_private_key(private_path, "correct horse")
    public = load_public_key(public_path)
    assert fingerprint(key.public_key()) == fingerprint(public)
    assert signature_valid(public, sign_bytes(key, b"manifest"), b"manifest")
    assert not signature_valid(public, sign_bytes(key, b"manifest"), b"manifest!")


def test_wrong_or_missing_passphrase_names_the_key_file(tmp_path: Path):
    private_path, _ = generate_keypair(tmp_path, "secret")
    with pytest.raises(InputError, match="wrong passphrase") as wrong:
        load_private_key(private_path, "guess")
    assert str(private_path) in str(wrong.value)
    with pytest.raises(InputError, match=PASSPHRASE_ENV):
        load_private_key(private_path, None)


def test_unencrypted_only_when_asked(tmp_path: Path):
    with pytest.raises(ConfigError, match="--no-passphrase"):
        generate_keypair(tmp_path, None)
    assert not (tmp_path / "signing.key").exists()
    private_path, _ = generate_keypair(tmp_path, None, allow_unencrypted=True)
    assert b"ENCRYPTED" not in private_path.read_bytes()
    load_private_key(private_path, None)


def test_refuses_to_overwrite(tmp_path: Path):
    generate_keypair(tmp_path, "a")
    before = (tmp_path / "signing.key").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(tmp_path, "b")
    assert (tmp_path / "signing.key").read_bytes() == before


def test_cli_keygen(run_cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(PASSPHRASE_ENV, "from-env")
    code, text = run_cli("keygen", "--out", tmp_path / "k")
    assert code == 0 and "encrypted" in text and "sha256:" in text
    load_private_key(tmp_path / "k" / "signing.key", "from-env")
    code, text = run_cli("keygen", "--out", tmp_path / "k")
    assert code == 2 and "already exists" in text
    monkeypatch.delenv(PASSPHRASE_ENV)
    code, text = run_cli("keygen", "--out", tmp_path / "plain", "--no-passphrase")
    assert code == 0 and "unencrypted" in text


def test_public_key_of_another_type_is_rejected(tmp_path: Path):
    bad = tmp_path / "not-a-key.pub"
    bad.write_text("hello\n")
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(bad)
