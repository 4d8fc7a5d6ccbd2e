"""Jobs that take drawn virtual time: the real worker, run in-process, on a `VirtualClock`.

For ``fedhpc simulate``: heterogeneous facilities (slow queues, slow GPUs,
flaky nodes) studied in seconds with the real orchestrator, aggregators and
exchange format. `submit` runs the worker task at once, in this process and
on one rank, so the update directory is exactly what a local job writes; the
job then *appears* to take queue_wait + startup + local_steps × seconds_per_step
virtual seconds (plus, with `transfer.bandwidth`, the bytes of the staged global
and of the published update over that bandwidth), and `poll` reports QUEUED, RUNNING and DONE as the clock
passes those times (announced with `VirtualClock.schedule`).

Every draw comes from its own `random.Random`, seeded by a SHA-256 of
(seed, job name, draw name), so a job's duration and fate depend on nothing
but its name: not on submission order, wall time or Python's hash salt.
A job that the simulation fails (``failure_rate``, or a duration past its
walltime) never runs the worker, as its output would never be used.

It lives in `simulate/`, not among the facility launchers, because it runs
the worker itself and needs the virtual clock: the server's packages must not
import the worker. `fedhpc simulate` builds one per facility
(`simulated_launchers`) and hands them to the orchestrator.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedhpc.clock import VirtualClock
from fedhpc.config import (
    Distribution,
    ExponentialDistribution,
    FacilityConfig,
    LognormalDistribution,
    SimulatedLauncherConfig,
    UniformDistribution,
)
from fedhpc.errors import ConfigError, FedhpcError, SubmitError
from fedhpc.exchange import MANIFEST_NAME, WorkerTask, read_manifest
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus, Launcher
from fedhpc.worker.distributed import RankEnv

logger = logging.getLogger(__name__)

WORKER_ARGV = ["-m", "fedhpc", "worker", "--task"]
"""After the interpreter: the only command this launcher runs (``python -m fedhpc worker --task PATH``)."""

_IN_PROCESS = threading.Lock()
"""One in-process worker at a time: the recipe changes process-wide state (RNG seeds, the worker's logger)."""


def sample(distribution: Distribution, rng: random.Random) -> float:
    """One value of a configured duration: a constant, or a draw from its distribution."""
    match distribution:
        case UniformDistribution(uniform=(low, high)):
            return rng.uniform(low, high)
        case LognormalDistribution(lognormal=parameters):
            return rng.lognormvariate(math.log(parameters.median), parameters.sigma)
        case ExponentialDistribution(exponential=mean):
            return rng.expovariate(1.0 / mean)
    return float(distribution)


def draw_rng(seed: int, job_name: str, draw: str) -> random.Random:
    """A generator for one draw of one job, stable across processes (hashlib, not the salted `hash`)."""
    digest = hashlib.sha256(f"{seed}\0{job_name}\0{draw}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class JobPlan:
    """A job's virtual timeline: it waits `queue_wait` s, then runs `run_seconds` s; `failure` says why it fails."""

    queue_wait: float
    run_seconds: float
    failure: str | None = None


def plan_job(config: SimulatedLauncherConfig, job_name: str, local_steps: int, walltime_s: float | None) -> JobPlan:
    """Draw the job's durations and whether the simulation fails it (walltime counts from the start, as on clusters)."""

    def draw(distribution: Distribution, name: str) -> float:
        return sample(distribution, draw_rng(config.seed, job_name, name))

    queue_wait = draw(config.queue_wait, "queue_wait")
    run_seconds = draw(config.startup, "startup") + local_steps * draw(config.seconds_per_step, "seconds_per_step")
    failure = None
    fate = draw_rng(config.seed, job_name, "failure")
    if fate.random() < config.failure_rate:
        run_seconds *= fate.random()
        failure = f"simulated failure after {run_seconds:g} s (failure_rate {config.failure_rate:g})"
    if walltime_s is not None and run_seconds > walltime_s:
        return JobPlan(queue_wait, walltime_s, f"walltime exceeded ({walltime_s:g} s)")
    return JobPlan(queue_wait, run_seconds, failure)


@dataclass
class SimulatedJob:
    """What a `JobHandle.native` holds: the job's virtual start and end, and its outcome from the end on."""

    starts_at: float
    ends_at: float
    outcome: JobStatus
    cancelled: JobStatus | None = None


class SimulatedLauncher(Launcher):
    """`Launcher` on a `VirtualClock`; see the module docstring."""

    def __init__(self, config: SimulatedLauncherConfig, clock: VirtualClock):
        self.config = config
        self.clock = clock

    def submit(self, job: JobSpec) -> JobHandle:
        """Run the worker now, then schedule the job's virtual start and end. ``job.env`` does not apply in-process."""
        task_path = worker_task_path(job.argv)
        if not job.name or os.sep in job.name or job.name.startswith("."):
            raise SubmitError(f"job name {job.name!r} must be a plain file name (it names the log files)")
        log_dir = Path(job.log_dir)
        err_path = log_dir / f"{job.name}.err"
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / f"{job.name}.out").touch()
            err_path.touch()
        except OSError as e:
            raise SubmitError(f"could not start job {job.name!r}: {e}") from e
        return self._start(job, task_path, err_path, self.clock.now(), reuse_output=False)

    def reattach(self, job: JobSpec, submitted_at: float) -> JobHandle:
        """The job a previous server submitted at `submitted_at`, with the same timeline and outcome.

        A job's plan depends only on its name, so a resumed simulation picks up exactly where the
        killed one was; the worker is not run again if its update was already published.
        """
        task_path = worker_task_path(job.argv)
        log_dir = Path(job.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        err_path = log_dir / f"{job.name}.err"
        err_path.touch()
        return self._start(job, task_path, err_path, submitted_at, reuse_output=True)

    def _start(self, job: JobSpec, task_path: Path, err_path: Path, submitted_at: float, reuse_output: bool
               ) -> JobHandle:
        plan = plan_job(self.config, job.name, _local_steps(task_path), job.walltime_s)
        if plan.failure is None and reuse_output and _published(task_path):
            outcome = JobStatus(JobState.DONE, 0)
        elif plan.failure is None:
            outcome = _run_in_process(task_path, err_path)
        else:
            outcome = JobStatus(JobState.FAILED, reason=plan.failure)
            with open(err_path, "a") as err:
                err.write(f"{plan.failure}\n")
        transfer = transfer_seconds(self.config, task_path, outcome.state == JobState.DONE)
        starts_at = submitted_at + plan.queue_wait
        native = SimulatedJob(starts_at, starts_at + plan.run_seconds + transfer, outcome)
        self.clock.schedule(native.starts_at)
        self.clock.schedule(native.ends_at)
        logger.info("%s: queued %g s, runs %g s, transfers %g s, then %s",
                    job.name, plan.queue_wait, plan.run_seconds, transfer, outcome.state.value)  # fmt: skip
        return JobHandle(job_id=f"sim-{job.name}", spec=job, submitted_at=submitted_at, native=native)

    def poll(self, handle: JobHandle) -> JobStatus:
        job = _simulated_job(handle)
        if job is None:
            return JobStatus(JobState.UNKNOWN, reason=f"{handle.job_id} was not started by this launcher")
        if job.cancelled is not None:
            return job.cancelled
        now = self.clock.now()
        if now < job.starts_at:
            return JobStatus(JobState.QUEUED)
        if now < job.ends_at:
            return JobStatus(JobState.RUNNING)
        return job.outcome

    def cancel(self, handle: JobHandle) -> None:
        """Idempotent; a job that had already ended keeps its own outcome (as with the local launcher)."""
        job = _simulated_job(handle)
        if job is None:
            logger.warning("cannot cancel %s: not started by this launcher", handle.job_id)
        elif job.cancelled is None and self.clock.now() < job.ends_at:
            job.cancelled = JobStatus(JobState.CANCELLED, reason="cancelled")


def simulated_launchers(facilities: Sequence[FacilityConfig], clock: VirtualClock) -> dict[str, Launcher]:
    """One `SimulatedLauncher` per facility, all on `clock`: the launchers `fedhpc simulate` gives the orchestrator."""
    launchers: dict[str, Launcher] = {}
    for facility in facilities:
        if not isinstance(facility.launcher, SimulatedLauncherConfig):
            raise ConfigError(f"facility {facility.name} does not use `launcher: {{kind: simulated}}`; a simulation "
                              "runs every facility on the virtual clock", key="facilities")
        launchers[facility.name] = SimulatedLauncher(facility.launcher, clock)
    return launchers


def transfer_seconds(config: SimulatedLauncherConfig, task_path: Path, published: bool) -> float:
    """Virtual seconds the job's bytes spend on the facility's link: the staged global down, the update up.

    The sizes are those of the real files (a compressed update counts its encoded
    bytes); the update only when the job published one. 0 without `transfer`.
    """
    if config.transfer is None:
        return 0.0
    try:
        task = WorkerTask.read(task_path)
    except (OSError, ValueError):  # the worker reports an unreadable task; nothing moved
        return 0.0
    nbytes = exchange_bytes(task.global_dir) if task.global_dir is not None else 0
    if published:
        nbytes += exchange_bytes(task.update_dir)
    return config.transfer.seconds(nbytes)


def exchange_bytes(directory: Path) -> int:
    """Bytes a mover copies for an exchange directory: its manifest and every file the manifest lists."""
    try:
        manifest = read_manifest(directory)
        return (directory / MANIFEST_NAME).stat().st_size + sum(entry.bytes for entry in manifest.files.values())
    except (OSError, FedhpcError):  # nothing there (an init job's global): nothing to move
        return 0


def worker_task_path(argv: list[str]) -> Path:
    """The task file of a ``python -m fedhpc worker --task PATH`` command; anything else is a `SubmitError`."""
    if len(argv) != len(WORKER_ARGV) + 2 or argv[1:-1] != WORKER_ARGV:
        raise SubmitError(
            f"the simulated launcher only runs fedhpc worker tasks (python -m fedhpc worker --task PATH), not {argv}"
        )
    return Path(argv[-1])


def _published(task_path: Path) -> bool:
    """Whether the task's update directory is already complete (its manifest is written last)."""
    try:
        return (WorkerTask.read(task_path).update_dir / "manifest.json").exists()
    except (OSError, ValueError):
        return False


def _local_steps(task_path: Path) -> int:
    """The task's ``train.local_steps``; 0 for an init task, or an unreadable one (the worker then says why)."""
    try:
        task = WorkerTask.read(task_path)
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return 0
    return task.train.local_steps if task.train is not None else 0


def _run_in_process(task_path: Path, err_path: Path) -> JobStatus:
    """Run the worker as rank 0 of 1; its outcome as a real job's exit status would tell it (and logged as there)."""
    # Imported here: the worker brings in transformers (seconds), which a server with real launchers never needs.
    from fedhpc.worker.main import LOG_FORMAT, execute_task

    with _IN_PROCESS, _worker_log_to(err_path, LOG_FORMAT) as log:
        try:
            execute_task(task_path, RankEnv())
        except FedhpcError as e:  # an expected failure: its message says what to fix
            log.error("task %s failed: %s", task_path, e)
            return JobStatus(JobState.FAILED, 1, str(e))
        except Exception as e:  # any other failure is still the job's outcome, not the server's
            log.exception("task %s failed: %s", task_path, e)
            return JobStatus(JobState.FAILED, 1, f"{type(e).__name__}: {e}")
    return JobStatus(JobState.DONE, 0)


@contextmanager
def _worker_log_to(err_path: Path, log_format: str) -> Iterator[logging.Logger]:
    """Send the worker's log lines (INFO and up) to the job's .err, like a real job's stderr, not to the server's."""
    worker_log = logging.getLogger("fedhpc.worker")
    handler = logging.FileHandler(err_path)
    handler.setFormatter(logging.Formatter(log_format))
    level, propagate = worker_log.level, worker_log.propagate
    worker_log.addHandler(handler)
    worker_log.setLevel(logging.INFO)
    worker_log.propagate = False
    try:
        yield worker_log
    finally:
        worker_log.removeHandler(handler)
        worker_log.setLevel(level)
        worker_log.propagate = propagate
        handler.close()


def _simulated_job(handle: JobHandle) -> SimulatedJob | None:
    return handle.native if isinstance(handle.native, SimulatedJob) else None
