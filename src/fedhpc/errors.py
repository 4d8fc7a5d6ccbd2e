"""Every exception fedhpc raises on purpose, in one tree.

Callers catch the branch they can act on: the CLI maps `ConfigError` to exit
code 2 and any other `FedhpcError` to exit code 1; the orchestrator turns
`UpdateRejected` and `FacilityFailed` into ledger records instead of crashes.
Messages say what to do next.
"""

from __future__ import annotations


class FedhpcError(Exception):
    """Base of every error fedhpc raises deliberately."""


class ConfigError(FedhpcError):
    """An experiment file (or a --set override) is invalid.

    `file` and `key` name where the problem is; the message says what was
    expected. Raised before anything is written to disk.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ExchangeError(FedhpcError):
    """An exchange directory (global model or update) is unreadable or malformed."""


class UpdateRejected(ExchangeError):
    """An update failed verification; `reason` is a short machine-readable code.

    Reasons: ``missing_manifest``, ``bad_manifest``, ``checksum``, ``missing_tensor``,
    ``unexpected_tensor``, ``shape``, ``dtype``, ``non_finite``, ``fingerprint``,
    ``norm``, ``stale``, ``round``.
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class SubmitError(FedhpcError):
    """A launcher could not start a job; carries the launcher's own output."""

    def __init__(self, message: str, *, returncode: int | None = None, stdout: str = "", stderr: str = ""):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(message)


class TransferError(FedhpcError):
    """A mover could not copy a directory to or from a facility."""


class AuthError(FedhpcError):
    """Globus credentials are missing, expired or lack a consent the facility needs.

    The message names the command that fixes it (usually ``fedhpc login``);
    nothing interactive starts where no one can answer.
    """


class SimulationStalled(FedhpcError):
    """A simulated run waits on its virtual clock with nothing scheduled: no job will end, no deadline come."""


class FacilityFailed(FedhpcError):
    """A facility's job ended without a usable update (non-zero exit, timeout, cancel)."""


class QuorumNotMet(FedhpcError):
    """Fewer facilities than `algorithm.min_facilities` reported in a round."""


class RunMismatch(FedhpcError):
    """An existing run directory belongs to a different experiment."""


class ModelError(FedhpcError):
    """A base model cannot be found, converted or loaded."""


class DataError(FedhpcError):
    """A dataset file is missing, empty or has records of an unknown layout."""
