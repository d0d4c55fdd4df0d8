"""Seeds derived from a run's seed that repeat in every process.

Python's ``hash`` of a string is salted per process, so a seed made from it would differ
between Ray workers and between runs; a SHA-256 digest does not.
"""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` joined by ``|`` (e.g. run seed, site, stage, round)."""
    text = "|".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
