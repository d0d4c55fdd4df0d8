"""File hashes and the release manifest (canonical JSON, the exact bytes that get signed).

``manifest.json`` lists the SHA-256 of every file of a release except itself and
``manifest.sig``, keyed by POSIX path relative to the release root, sorted. It is written as
canonical JSON (sorted keys, no spaces, ASCII, one trailing newline) so that the bytes a
recipient verifies are the bytes that were signed, whatever JSON library wrote them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fedcmr4d.errors import InputError

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MANIFEST_FORMAT = "fedcmr4d-release-manifest"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: Path, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Every regular file under ``root`` as sorted POSIX relative paths.

    Symbolic links and other special files are refused: a release or an audited cohort must be
    plain files, or a hash could describe something other than what a reader opens.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise InputError(f"{path}: symbolic links are not allowed in a cohort or release")
        if path.is_dir():
            continue
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        if rel not in exclude:
            found.append(rel)
    return sorted(found)


def tree_hashes(root: Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{relative POSIX path: SHA-256}`` of every file under ``root`` (sorted by path)."""
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in list_files(root, exclude)}


def canonical_json(payload: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact separators, ASCII, trailing newline."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return (text + "\n").encode("ascii")


def build_manifest(root: Path, signer_fingerprint: str, created_utc: str) -> bytes:
    """Canonical manifest bytes for every file under ``root`` except manifest and signature.

    Args:
        root: the release folder being built.
        signer_fingerprint: ``sha256:<hex>`` of the signing public key (see ``sign.py``), so a
            verifier can tell "signed by another key" from "edited".
        created_utc: ISO-8601 time stamp recorded in the manifest.
    """
    files = tree_hashes(root, frozenset({MANIFEST_FILE, SIGNATURE_FILE}))
    return canonical_json(
        {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "algorithm": "sha256",
            "created_utc": created_utc,
            "signer": signer_fingerprint,
            "files": files,
        }
    )
