"""Every exception fedhpc raises on purpose, in one tree.

Callers catch the branch they can act on: the CLI maps each to an `ExitCode`
(`exit_code`); the orchestrator turns `UpdateRejected` and `FacilityFailed`
into ledger records instead of crashes. Messages say what to do next.
"""

from __future__ import annotations

import enum
import signal


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


class PrivacyRefused(ConfigError):
    """A privacy setting the accountant cannot stand behind (e.g. adaptive clipping whose count noise leaves
    no noise for the update itself); `key` names the setting to change. Raised before the run starts.
    """


class ExchangeError(FedhpcError):
    """An exchange directory (global model or update) is unreadable or malformed."""


class UpdateRejected(ExchangeError):
    """An update failed verification; `reason` is a short machine-readable code.

    Reasons: ``missing_manifest``, ``bad_manifest``, ``checksum``, ``unexpected_file``,
    ``missing_tensor``, ``unexpected_tensor``, ``shape``, ``dtype``, ``non_finite``,
    ``fingerprint``, ``norm``, ``stale``, ``round``, ``num_samples``, ``local_steps``, ``bad_metrics``,
    ``codec`` (a compressed tensor whose codec, params or stored parts are not what an encoder writes).
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class CodecError(ExchangeError):
    """A compressed tensor's params or stored parts are not what its codec writes (the reader names the tensor)."""


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


class RunInterrupted(FedhpcError):
    """The server was asked to stop (SIGINT, SIGTERM); `signum` says which, so the exit code can tell them apart.

    Raised at a safe point (between polls, before a submission) after the first
    signal, or at once after a second one.
    """

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")


class RunMismatch(FedhpcError):
    """An existing run directory belongs to a different experiment."""


class ModelError(FedhpcError):
    """A base model cannot be found, converted or loaded."""


class DataError(FedhpcError):
    """A dataset file is missing, empty or has records of an unknown layout."""


class PrivacyBudgetReached(FedhpcError):
    """The next round would spend more than `privacy.target_epsilon`: the run stops cleanly before launching it.

    Not a failure: the run did what its budget allows. Running it again stops again (the budget is spent), unless
    the experiment's privacy section is changed.
    """


class ExampleBudgetSpent(FedhpcError):
    """A facility's example-level ε (all its rounds, `example_privacy.target_epsilon`) would pass its target.

    Raised by the worker before it trains, so the job fails with nothing released; or when the facility's
    accountant file cannot be read (a lost or corrupt file would restart its ε from zero).
    """


class SecAggError(FedhpcError):
    """Secure aggregation (docs/secure-aggregation.md) could not go on; the branch says why."""


class SecAggRangeError(SecAggError):
    """A facility's update has a value outside the fixed-point range: refused there, never wrapped silently."""


class SecAggRejected(SecAggError):
    """A secure-aggregation message failed its checks: a bad signature, a key that differs from the pinned one,
    a share that does not decrypt, or a message for another run, round or facility."""


class SecAggThresholdError(SecAggError):
    """Too few facilities answered the unmask request to remove the masks; the round fails, nothing is committed."""


class ExitCode(enum.IntEnum):
    """What `fedhpc run` (and every command) exits with; documented in README.md and docs/configuration.md.

    Distinct codes let a batch script or CI tell "fix the facilities and resume"
    from "fix the experiment file" from "someone stopped it".
    """

    OK = 0
    ERROR = 1  # any other run-time failure (a mismatched run directory, a failed init, ...)
    BAD_INPUT = 2  # a bad experiment file, --set value, argument or dataset
    QUORUM_NOT_MET = 3  # a round closed with fewer accepted updates than algorithm.min_facilities
    BUDGET_REACHED = 4  # the run stopped at its time limit with rounds left
    COMPLETED_WITH_FAILURES = 5  # every round completed, but a job failed or an update was rejected on the way
    PRIVACY_BUDGET_SPENT = 6  # stopped before a round that would spend more than privacy.target_epsilon
    INTERRUPTED = 130  # SIGINT (Ctrl-C), 128 + 2 as shells report it
    TERMINATED = 143  # SIGTERM (e.g. a batch system's scancel), 128 + 15


def exit_code(error: BaseException) -> ExitCode:
    """The exit code for an error that ended a command."""
    if isinstance(error, RunInterrupted):
        return ExitCode.TERMINATED if error.signum == signal.SIGTERM else ExitCode.INTERRUPTED
    if isinstance(error, (ConfigError, DataError)):
        return ExitCode.BAD_INPUT
    if isinstance(error, QuorumNotMet):
        return ExitCode.QUORUM_NOT_MET
    if isinstance(error, PrivacyBudgetReached):
        return ExitCode.PRIVACY_BUDGET_SPENT
    return ExitCode.ERROR
