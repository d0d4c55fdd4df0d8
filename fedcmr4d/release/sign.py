"""Ed25519 keys and signatures for releases (``cryptography``).

- ``signing.key``: PKCS#8 PEM private key, encrypted with a passphrase (the library's best
  available PKCS#8 encryption) unless the caller explicitly asks for an unencrypted key.
- ``signing.pub``: SubjectPublicKeyInfo PEM public key; the one file a recipient needs.
- A key's fingerprint is ``sha256:<hex>`` of its raw 32-byte public key; the manifest records the
  signer's fingerprint so :mod:`fedcmr4d.release.verify` can say "signed by another key".
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcmr4d.errors import ConfigError, InputError

PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"
PASSPHRASE_ENV = "FEDCMR4D_KEY_PASSPHRASE"


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively (never overwrite) through a temporary name and a link."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.link(tmp, path)  # fails if path appeared meanwhile: no overwrite, ever
    finally:
        tmp.unlink(missing_ok=True)


def generate_keypair(
    out_dir: str | Path, passphrase: str | None, *, allow_unencrypted: bool = False
) -> tuple[Path, Path]:
    """Create ``signing.key`` and ``signing.pub`` in ``out_dir``; refuse to overwrite.

    Args:
        out_dir: folder for the two files (created if missing).
        passphrase: encrypts the private key; ``None`` or empty only with
            ``allow_unencrypted=True``.
        allow_unencrypted: the explicit opt-in for an unencrypted private key.

    Returns:
        (private key path, public key path).
    """
    out = Path(out_dir)
    private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path}: already exists; refusing to overwrite a key")
    if not passphrase and not allow_unencrypted:
        raise ConfigError(
            f"{private_path}: no passphrase given (prompt or {PASSPHRASE_ENV}); an unencrypted "
            "key needs --no-passphrase"
        )
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def private_key_is_encrypted(path: str | Path) -> bool:
    """True when the PEM at ``path`` is an encrypted PKCS#8 key."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read private key ({exc.strerror})") from None
    return b"ENCRYPTED PRIVATE KEY" in text


def load_private_key(path: str | Path, passphrase: str | None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key; raises :class:`InputError` naming the file and problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read private key ({exc.strerror})") from None
    secret = passphrase.encode() if passphrase else None
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError:
        raise InputError(
            f"{path}: key is encrypted; give the passphrase (prompt or {PASSPHRASE_ENV})"
            if secret is None
            else f"{path}: key is not encrypted; do not give a passphrase"
        ) from None
    except ValueError:
        raise InputError(f"{path}: wrong passphrase, or not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM); raises :class:`InputError` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read public key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise InputError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """64-byte Ed25519 signature of ``data``."""
    return key.sign(data)


def signature_valid(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``key``'s Ed25519 signature of exactly ``data``."""
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
