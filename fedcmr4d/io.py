"""Atomic writes, JSON reading and hashing: one copy each for the whole toolkit.

Every file the toolkit writes goes to a temporary name in the same folder and is renamed when
complete, so a crash never leaves a half-written file that looks finished. Every small JSON file
it reads goes through :func:`read_json_object`, so unreadable, malformed and non-object content
is reported the same way, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.errors import InputError

_CHUNK = 1 << 20


def atomic_write(
    path: str | Path, write: Callable[[str], None], *, mode: int | None = None
) -> None:
    """Create ``path`` by ``write(tmp_path)`` on a temporary sibling, then an atomic rename.

    The temporary name (``.tmp-XXXX-<name>``) ends with the final name, so writers that pick a
    format from the extension (nibabel, matplotlib) write the right one.

    Args:
        path: the final file; its parent folders are created.
        write: writes the complete content to the temporary path it is given.
        mode: permission bits set on the temporary file before the rename (default: mkstemp's
            0600, which is what private material needs; published files pass 0o644).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(path, write, mode=mode)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode(), mode=mode)


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Indented, key-sorted JSON with a trailing newline, written atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """Parse ``path`` as a JSON object, or raise :class:`InputError` naming the file and why.

    The one reader for every small JSON file the toolkit consumes (cohort index, subject meta,
    checkpoint meta, audit, sidecars).
    """
    try:
        payload = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid JSON in {what} ({exc})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: {what} must be a JSON object")
    return payload


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: str | Path, exclude: frozenset[str] = frozenset()) -> list[str]:
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


def tree_hashes(root: str | Path, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{relative POSIX path: SHA-256}`` of every file under ``root`` (sorted by path)."""
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in list_files(root, exclude)}


def weights_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes (sorted by name): a model's identity.

    The one digest of a set of weights: the stage-1 delivery names the autoencoder by it and the
    audit query names the global model by it.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
