"""CLI commands: evaluate."""

from __future__ import annotations

from fedcmr4d.cli import app  # noqa: F401
