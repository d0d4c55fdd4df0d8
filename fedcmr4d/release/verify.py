"""Offline verification of a release: the signature first, then every file against the manifest.

Checks, in order, stopping at the first problem (:class:`InvalidReleaseError`, exit 5):

1. ``manifest.json`` and ``manifest.sig`` exist;
2. ``manifest.sig`` is a valid Ed25519 signature of the exact bytes of ``manifest.json`` under
   the recipient's public key (when it is not, the manifest's ``signer`` field tells "wrong
   public key / signed by another key" apart from "manifest or signature altered");
3. the manifest is well formed;
4. the release holds exactly the listed files (none missing, none added) and each one's
   SHA-256 matches; the first bad path in sorted order is named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedcmr4d.errors import InputError, InvalidReleaseError
from fedcmr4d.io import list_files, sha256_file
from fedcmr4d.release.manifest import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    SIGNATURE_FILE,
)
from fedcmr4d.release.sign import fingerprint, load_public_key, signature_valid


@dataclass
class Verified:
    """A release that passed verification.

    Attributes:
        root: the release folder.
        n_files: files covered by the manifest.
        signer: ``sha256:<hex>`` fingerprint of the signing key.
    """

    root: Path
    n_files: int
    signer: str


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise InvalidReleaseError(f"{path}: missing; not a complete release")
    return path.read_bytes()


def _signer_field(manifest_bytes: bytes) -> str | None:
    try:
        value = json.loads(manifest_bytes).get("signer")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _check_signature(root: Path, manifest_bytes: bytes, public_key_path: Path) -> str:
    public_key = load_public_key(public_key_path)
    expected = fingerprint(public_key)
    signature = _read(root / SIGNATURE_FILE)
    if signature_valid(public_key, signature, manifest_bytes):
        return expected
    named = _signer_field(manifest_bytes)
    if named is not None and named != expected:
        raise InvalidReleaseError(
            f"{root / SIGNATURE_FILE}: release names signer {named}, but the public key "
            f"{public_key_path} is {expected} (wrong public key, or signed by another key)"
        )
    raise InvalidReleaseError(
        f"{root / SIGNATURE_FILE}: not a valid signature of {MANIFEST_FILE} by {expected} "
        f"({MANIFEST_FILE} edited, signature altered, or signed by another key)"
    )


def _parse_manifest(root: Path, manifest_bytes: bytes) -> dict[str, str]:
    path = root / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise InvalidReleaseError(f"{path}: invalid JSON ({exc})") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or manifest.get("version") != MANIFEST_VERSION
        or not isinstance(manifest.get("files"), dict)
    ):
        raise InvalidReleaseError(f"{path}: not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} manifest")
    return dict(manifest["files"])


def _check_files(root: Path, listed: dict[str, str]) -> None:
    try:
        present = set(list_files(root, frozenset({MANIFEST_FILE, SIGNATURE_FILE})))
    except InputError as exc:
        raise InvalidReleaseError(str(exc)) from None
    for rel in sorted(present | set(listed)):
        if rel not in present:
            raise InvalidReleaseError(f"{root / rel}: listed in {MANIFEST_FILE} but missing")
        if rel not in listed:
            raise InvalidReleaseError(f"{root / rel}: not listed in {MANIFEST_FILE} (file added)")
        if sha256_file(root / rel) != listed[rel]:
            raise InvalidReleaseError(f"{root / rel}: SHA-256 differs from {MANIFEST_FILE}")


def verify_release(release_dir: str | Path, public_key_path: str | Path) -> Verified:
    """Verify a release offline; raises :class:`InvalidReleaseError` naming the first problem.

    Args:
        release_dir: the release folder.
        public_key_path: the publisher's ``signing.pub`` (obtained through a trusted channel).

    Returns:
        :class:`Verified` when signature and every file check out.
    """
    root = Path(release_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such release folder")
    manifest_bytes = _read(root / MANIFEST_FILE)
    signer = _check_signature(root, manifest_bytes, Path(public_key_path))
    listed = _parse_manifest(root, manifest_bytes)
    _check_files(root, listed)
    return Verified(root, len(listed), signer)
