"""Error types that map one-to-one onto the CLI's documented exit codes (DESIGN.md).

Every error carries a message that names the file and the problem, so that a user reading one
line knows what to fix. The CLI catches :class:`FedCMRError` and exits with ``exit_code``.
"""

from __future__ import annotations


class FedCMRError(Exception):
    """Base class; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class ConfigError(FedCMRError):
    """A usage or configuration problem (bad YAML, unknown key, value out of range)."""

    exit_code = 2


class InputError(FedCMRError):
    """Unreadable or invalid input data (corrupt NIfTI, wrong shape, NaN, missing file)."""

    exit_code = 3


class AuditFailedError(FedCMRError):
    """The memorization audit failed, or a release was refused because of its audit."""

    exit_code = 4


class InvalidReleaseError(FedCMRError):
    """A release failed verification (signature or a file hash)."""

    exit_code = 5


class BudgetExhaustedError(FedCMRError):
    """Training would spend more privacy budget than the site allows."""

    exit_code = 6
