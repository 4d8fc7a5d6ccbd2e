"""How the server reaches a facility: a `Launcher` runs jobs, a `Mover` copies directories.

Both are small on purpose (Parsl's provider/launcher split): a launcher knows
nothing of files, a mover nothing of jobs, and they meet only in the
orchestrator. Job states from any scheduler are translated into `JobState`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

REASON_LINES = 20
"""How many of a failed program's last stderr lines its reason keeps."""


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    returncode: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class JobSpec:
    """A command to run on every rank of one job.

    `argv` is one rank's program (e.g. ``[python, -m, fedhpc, worker, --task, T]``);
    the launcher decides how ranks are started around it (torchrun, mpiexec, srun).
    `task` is the facility-side path of the task.json that `argv` runs, so a
    launcher that keeps a worker alive across rounds can hand it the task instead.
    """

    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    walltime_s: float | None = None
    task: str | None = None


@dataclass
class JobHandle:
    job_id: str
    spec: JobSpec
    submitted_at: float
    native: Any = field(default=None, repr=False, compare=False)


# torchrun's own stderr, told apart from the program's: its failure report starts at
# the agent's "failed (exitcode: N)" log line; banners and log lines before it are noise.
_REPORT_START = re.compile(r"torch/distributed/elastic/.*failed \(exitcode: -?\d+\)")
_ROOT_CAUSE = re.compile(r"Root Cause.*?\brank\s*:\s*(\d+).*?\bexitcode\s*:\s*(-?\d+)", re.S)
_TORCHRUN_NOISE = re.compile(
    r"^(\*{5,}$|Setting OMP_NUM_THREADS environment variable|[IWE]\d{4} [\d:.]+ \d+ \S*torch/distributed/)"
)


def failure_reason(stderr: str, returncode: int | None, max_lines: int = REASON_LINES) -> str:
    """Why a job failed, for the ledger: which rank failed first, then the program's last stderr lines.

    Here, beside `JobStatus`, because every backend whose jobs run torchrun (local, batch, Globus
    Compute) reads the same stderr the same way, so a failure reads alike whatever ran it.
    """
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if _REPORT_START.search(line)), None)
    head = f"exited with code {returncode}"
    if start is not None:
        root = _ROOT_CAUSE.search("\n".join(lines[start:]))
        if root:
            rank, code = root.group(1), int(root.group(2))
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            head = f"rank {rank} {how} (first failure)"
        lines = lines[:start]
    program = [line for line in lines if line.strip() and not _TORCHRUN_NOISE.match(line)]
    if not program:
        return f"{head}; nothing on stderr"
    return f"{head}; stderr tail:\n" + "\n".join(program[-max_lines:])


class Launcher(Protocol):
    """Runs jobs at one facility. A backend subclasses this and implements the first three methods.

    The last two have defaults because not every backend can do them; the server calls
    them on every launcher, so what a backend can do is read here, not discovered.
    """

    def submit(self, job: JobSpec) -> JobHandle: ...

    def poll(self, handle: JobHandle) -> JobStatus: ...

    def cancel(self, handle: JobHandle) -> None: ...

    def reattach(self, spec: JobSpec, submitted_at: float) -> JobHandle | None:
        """The job a killed server submitted as `spec` at `submitted_at`, if it is still running; else None.

        A resumed server asks before it runs a job again. None (the default, for a backend
        whose jobs cannot outlive the server) makes it collect a published update or relaunch.
        A backend whose jobs are a function of their spec and submission time alone (the
        simulated launcher's virtual jobs) may re-create the job instead of finding it.
        """
        return None

    def close(self) -> None:
        """The run is over: stop what the launcher keeps between jobs (persistent workers); by default nothing."""
        return None


class Mover(Protocol):
    def facility_path(self, relative: str) -> str:
        """Where `relative` (inside the staging area) is, as the facility's jobs see it."""
        ...

    def push(self, local_dir: Path, relative: str) -> int:
        """Publish `local_dir` at `relative` in the staging area, complete or not at all; return the bytes."""
        ...

    def pull(self, relative: str, local_dir: Path) -> int:
        """Copy `relative` from the staging area to `local_dir` (which must not exist); return the bytes."""
        ...

    def exists(self, relative: str) -> bool: ...

    def peek(self, relative: str) -> bytes | None:
        """A small file's bytes (a worker's progress.json), or None when absent or not cheap to read."""
        ...

    def worker_args(self) -> list[str]:
        """What the worker's command line must add to reach its files (the proxystore mover names its store).

        By default nothing: the worker reads and writes the paths its task names.
        """
        return []
