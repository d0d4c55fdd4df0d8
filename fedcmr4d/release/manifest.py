"""File hashes and the release manifest (canonical JSON, the exact bytes that get signed).

``manifest.json`` lists the SHA-256 of every file of a release except itself and
``manifest.sig``, keyed by POSIX path relative to the release root, sorted. It is written as
canonical JSON (sorted keys, no spaces, ASCII, one trailing newline) so that the bytes a
recipient verifies are the bytes that were signed, whatever JSON library wrote them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcmr4d.io import tree_hashes

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MANIFEST_FORMAT = "fedcmr4d-release-manifest"
MANIFEST_VERSION = 1


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
