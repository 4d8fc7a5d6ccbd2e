"""Run a facility's job as one batch job through a Parsl execution provider (Slurm, PBS Pro, LSF, this machine).

Why Parsl's *providers* and not its executors: HighThroughputExecutor and
MPIExecutor ship Python functions to the compute nodes serialized with
dill/pickle, and nothing that crosses the server–facility boundary may be
unpickled or exec'd (docs/architecture.md). The providers are exactly the
batch-scheduler layer we need -- submit, status and cancel through sbatch,
qsub, bsub or a local process -- and with Parsl's `SimpleLauncher` our command
runs once, on the job's first node. That command is a short bash script
(`batch_job.job_script`: exports, the rank line of `ranks.rank_command`, the exit
status into ``<dir>/<job>.rc``), and the worker it starts reads only files.
Parsl's provider puts the scheduler directives and ``worker_init`` (module
loads, venv activation) in front of it. ``<dir>`` is ``launcher.script_dir``, by
default ``<the job's log dir>/parsl``; the provider writes the submit script and
the job's stdout/stderr there too (Slurm, PBS: ``<job>.<time>.stdout``/``.stderr``;
local: ``<job>.<time>.sh.out``/``.err``; LSF: ``<job>.<time>.submit.stdout``/``.stderr``).

State (`poll`): the ``.rc`` file is the truth, because without an accounting
database a job gone from squeue/qstat/bjobs is reported COMPLETED by Parsl
whatever happened to it. Scheduler states come through one table
(`LIVE_STATES`); a job that ended without an ``.rc`` file failed, and
`batch_job.job_outcome` names why from the scheduler's stderr banner (walltime, scancel)
or, on Slurm, ``scontrol show job``. Status queries are cached for
``launcher.status_interval`` seconds, however often the server polls.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhpc.config import ParslLauncherConfig
from fedhpc.errors import ConfigError, SubmitError
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus, Launcher
from fedhpc.facility.launchers.batch_job import UNEXPLAINED, job_outcome, job_script, walltime_for

logger = logging.getLogger(__name__)
# SimpleLauncher warns at every multi-node submit that it starts one process; that one process is our
# rank launcher (mpiexec, srun, ...), which spans the nodes, so the warning is noise in the progress view.
logging.getLogger("parsl.launchers.launchers").addFilter(
    lambda record: "only supports single node per block" not in record.getMessage()
)

RC_GRACE_S = 10.0
"""Seconds a job the scheduler says ended may take to show its .rc file (NFS caches directory entries)."""
KILL_GRACE_S = 10.0
"""Local provider: seconds between Parsl's SIGTERM to the job's process group and our SIGKILL."""
_TAIL_BYTES = 64 * 1024
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UNSAFE_PATH = re.compile(r"[\s'\"`$\\;&|<>()*?\[\]{}!#~]")  # Parsl's providers paste paths into shell lines unquoted
LIVE_STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "HELD": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "UNKNOWN": JobState.UNKNOWN,
}
"""Parsl job states (by name) of a job that has not ended; any other state means it ended: read its files."""


def tasks_per_node(config: ParslLauncherConfig) -> int:
    """What the provider requests per node: the ranks, or one agent for torchrun / a lone process."""
    return 1 if config.mpi.launcher in ("torchrun", "none") else config.ranks_per_node


def provider_arguments(config: ParslLauncherConfig) -> dict[str, Any]:
    """Keyword arguments of the Parsl provider class for `config` (the launcher is added by the caller).

    Only keys the provider knows are passed; the config rejects keys a provider has no use for.
    """
    arguments: dict[str, Any] = {
        "nodes_per_block": config.nodes, "init_blocks": 0, "min_blocks": 0, "max_blocks": 1,
        "worker_init": config.worker_init,
    }  # fmt: skip
    options = "\n".join(config.scheduler_options)
    if config.provider == "slurm":
        gpus = config.gpus_per_rank * config.ranks_per_node
        arguments |= {
            "partition": config.partition, "account": config.account, "qos": config.qos,
            "constraint": config.constraint, "cores_per_node": config.cores_per_node,
            "mem_per_node": config.mem_per_node, "gpus_per_node": gpus or None, "scheduler_options": options,
        }  # fmt: skip
        if config.exclusive is not None:
            arguments["exclusive"] = config.exclusive
    elif config.provider == "pbspro":
        select = f"mpiprocs={config.ranks_per_node}"
        if config.gpus_per_rank:
            select += f":ngpus={config.gpus_per_rank * config.ranks_per_node}"
        arguments |= {
            "account": config.account, "queue": config.queue, "scheduler_options": options,
            "cpus_per_node": config.cores_per_node or config.ranks_per_node, "select_options": select,
        }  # fmt: skip
    elif config.provider == "lsf":
        arguments |= {"project": config.project, "queue": config.queue, "scheduler_options": options}
    return arguments


# ---- the launcher --------------------------------------------------------------------------------


@dataclass
class ParslJob:
    """What a `JobHandle.native` holds for a Parsl job."""

    provider_id: str
    script_dir: Path
    name: str
    walltime: str
    stderr: Path | None = None
    ended_seen: float | None = None  # monotonic time the scheduler first said the job was gone without an .rc
    scheduler_detail: str = ""  # Slurm's final state of a job that ended without an .rc (scontrol)
    warned: bool = False
    final: JobStatus | None = None

    @property
    def rc_file(self) -> Path:
        return self.script_dir / f"{self.name}.rc"

    @property
    def started_file(self) -> Path:
        return self.script_dir / f"{self.name}.started"

    @property
    def record_file(self) -> Path:
        """The provider's job id and log paths, for `ParslLauncher.reattach` after a server restart."""
        return self.script_dir / f"{self.name}.job.json"


def make_provider(config: ParslLauncherConfig) -> Any:
    """The Parsl provider for `config`, with `SimpleLauncher` (the command runs once, on the first node)."""
    try:
        from parsl.launchers import SimpleLauncher
        from parsl.providers import LocalProvider, LSFProvider, PBSProProvider, SlurmProvider
    except ImportError as e:
        raise ConfigError(
            "launcher kind: parsl needs the parsl package on the server; pip install 'fedhpc[hpc]'"
        ) from e
    classes = {"local": LocalProvider, "slurm": SlurmProvider, "pbspro": PBSProProvider, "lsf": LSFProvider}
    return classes[config.provider](launcher=SimpleLauncher(debug=False), **provider_arguments(config))


class ParslLauncher(Launcher):
    """`Launcher` for one batch job per round through a Parsl provider; see the module docstring."""

    def __init__(self, config: ParslLauncherConfig, *, kill_grace_s: float = KILL_GRACE_S):
        self.config = config
        self.kill_grace_s = kill_grace_s
        self.provider = make_provider(config)
        self._lock = threading.Lock()  # the provider's script_dir/walltime are set per submit
        self._queried_at = -math.inf

    def submit(self, job: JobSpec) -> JobHandle:
        if not _JOB_NAME.match(job.name):
            raise SubmitError(f"job name {job.name!r} must be a plain file name (it names the job's files)")
        script_dir = Path(self.config.script_dir or Path(job.log_dir) / "parsl").absolute()
        if _UNSAFE_PATH.search(str(script_dir)):
            raise SubmitError(
                f"the job directory {script_dir} has characters Parsl's providers do not quote in shell "
                "commands (spaces, quotes, $ ...); set launcher.script_dir to a plainer path"
            )
        walltime = self.config.walltime or walltime_for(job.walltime_s)
        native = ParslJob("", script_dir, job.name, walltime)
        try:
            script_dir.mkdir(parents=True, exist_ok=True)
            for stale in (native.rc_file, native.started_file, native.record_file):
                stale.unlink(missing_ok=True)  # an earlier submission of the same name
        except OSError as e:
            raise SubmitError(f"cannot prepare {script_dir} for job {job.name!r}: {e}") from e
        command = job_script(self.config, job.argv, job.env, native.rc_file, native.started_file)
        with self._lock:
            self.provider.script_dir = str(script_dir)
            if self.config.provider != "local":  # a local process has no walltime to set
                self.provider.walltime = walltime
            submitted_at = time.time()  # before sbatch/qsub: queue wait counts from here
            native.provider_id = self._submit(command, job.name)
            native.stderr = self._stderr_path(native)
        record = {"provider": self.config.provider, "id": native.provider_id, "walltime": walltime,
                  "stderr": str(native.stderr) if native.stderr else None, "resource": self._resource_record(native)}
        try:
            native.record_file.write_text(json.dumps(record))
        except OSError as e:
            logger.warning("cannot write %s (a restarted server will not find this job): %s", native.record_file, e)
        handle = JobHandle(f"{self.config.provider}-{native.provider_id}", job, submitted_at, native)
        logger.info("submitted %s as %s through Parsl's %s provider", job.name, handle.job_id, self.config.provider)
        return handle

    def _submit(self, command: str, name: str) -> str:
        from parsl.providers.errors import ExecutionProviderException, SubmitException

        try:
            provider_id = self.provider.submit(command, tasks_per_node(self.config), job_name=name)
        except SubmitException as e:
            said = (e.stderr or "").strip() or (e.stdout or "").strip() or e.message
            raise SubmitError(
                f"the {self.config.provider} scheduler refused job {name!r}: {said}",
                returncode=e.retcode, stdout=e.stdout or "", stderr=e.stderr or "",
            ) from e  # fmt: skip
        except (ExecutionProviderException, OSError, subprocess.SubprocessError) as e:
            raise SubmitError(f"could not submit job {name!r} through the {self.config.provider} provider: {e}") from e
        if provider_id is None:  # LSFProvider reports a failed bsub this way (and logs its output)
            raise SubmitError(f"the {self.config.provider} scheduler gave no job id for {name!r}; see the server log")
        return str(provider_id)

    def _stderr_path(self, job: ParslJob) -> Path | None:
        resource = self.provider.resources.get(job.provider_id, {})
        if "job_stderr_path" in resource:  # slurm, pbspro
            return Path(resource["job_stderr_path"])
        if "script_path" in resource:  # local: <dir>/<name>.<time>.sh, its stderr beside it
            return Path(resource["script_path"] + ".err")
        # lsf keeps no paths: its template logs to <submit script>.stdout/.stderr, <dir>/<name>.<time>.submit
        scripts = sorted(job.script_dir.glob(f"{job.name}.*.submit"), key=lambda path: path.stat().st_mtime)
        return Path(f"{scripts[-1]}.stderr") if scripts else None

    def _resource_record(self, job: ParslJob) -> dict[str, Any]:
        """The provider's bookkeeping for the job minus its status object (JSON, for `reattach`)."""
        resource = self.provider.resources.get(job.provider_id, {})
        return {key: value for key, value in resource.items() if key != "status"}

    def poll(self, handle: JobHandle) -> JobStatus:
        job = handle.native if isinstance(handle.native, ParslJob) else None
        if job is None:
            return JobStatus(JobState.UNKNOWN, reason=f"{handle.job_id} was not submitted by this server process")
        with self._lock:
            if job.final is not None:
                return job.final
            rc_text = _read(job.rc_file)
            if rc_text is not None:
                job.final = job_outcome(rc_text, _tail(job.stderr), walltime=job.walltime)
                return job.final
            state, message = self._scheduler_state(job)
            live = LIVE_STATES.get(state)
            if live is JobState.UNKNOWN and not job.warned:
                job.warned = True
                logger.warning("the %s provider reports an unknown state for %s", self.config.provider, handle.job_id)
            if live is not None:
                running = live is JobState.RUNNING or job.started_file.exists()
                return JobStatus(JobState.RUNNING) if running else JobStatus(live, reason=message)
            return self._ended_without_rc(job, state, message)

    def _scheduler_state(self, job: ParslJob) -> tuple[str, str]:
        """The provider's last word on the job (Parsl state name, message), asking at most every status_interval."""
        now = time.monotonic()
        if now - self._queried_at >= self.config.status_interval:
            self._queried_at = now
            try:
                self.provider.status([job.provider_id])  # refreshes every job of this provider at once
            except Exception as e:  # noqa: BLE001 -- a failed squeue is a missed look, not a failed job
                logger.warning("status query of the %s provider failed: %s", self.config.provider, e)
        status = self.provider.resources[job.provider_id]["status"]
        return status.state.name, status.message or ""

    def _ended_without_rc(self, job: ParslJob, state: str, message: str) -> JobStatus:
        stderr = _tail(job.stderr)
        detail = job.scheduler_detail
        if self.config.provider == "slurm" and not detail:
            detail = job.scheduler_detail = _slurm_final_state(job.provider_id)
        elif self.config.provider == "local" and message == "Killed":  # LocalProvider's word for it
            detail, message = "KILLED", ""
        outcome = job_outcome(None, stderr, walltime=job.walltime, scheduler_state=detail or state, message=message)
        if outcome.reason.startswith(UNEXPLAINED) and self.config.provider != "local":
            # "gone from the queue" without an .rc file: the file may not be visible here yet
            job.ended_seen = job.ended_seen or time.monotonic()
            if time.monotonic() - job.ended_seen < RC_GRACE_S:
                return JobStatus(JobState.RUNNING)
        job.final = outcome
        return outcome

    def cancel(self, handle: JobHandle) -> None:
        """Cancel through the provider (scancel, qdel, bkill, or a signal); idempotent; reports CANCELLED after.

        A job that had already written its exit status keeps its own outcome. With the local provider,
        what survives Parsl's SIGTERM for `kill_grace_s` is killed.
        """
        job = handle.native if isinstance(handle.native, ParslJob) else None
        if job is None:
            logger.warning("cannot cancel %s: not submitted by this server process", handle.job_id)
            return
        group = None
        with self._lock:
            if job.final is not None or job.rc_file.exists():
                return
            if self.config.provider == "local":
                group = _process_group(job.provider_id)
            try:
                self.provider.cancel([job.provider_id])
            except Exception as e:  # noqa: BLE001 -- report it; the job is given up either way
                logger.warning("cancelling %s failed: %s", handle.job_id, e)
            job.final = JobStatus(JobState.CANCELLED, reason="cancelled")
        if group is not None:
            _reap_group(group, self.kill_grace_s)

    def reattach(self, spec: JobSpec, submitted_at: float) -> JobHandle | None:
        """The handle of `spec`'s job submitted by an earlier server process, from its record file; None if none."""
        script_dir = Path(self.config.script_dir or Path(spec.log_dir) / "parsl").absolute()
        job = ParslJob("", script_dir, spec.name, self.config.walltime or walltime_for(spec.walltime_s))
        try:
            record = json.loads(job.record_file.read_text())
        except (OSError, ValueError):
            return None
        if record.get("provider") != self.config.provider or not record.get("id"):
            return None
        from parsl.jobs.states import JobState as ParslState
        from parsl.jobs.states import JobStatus as ParslStatus

        job.provider_id, job.walltime = str(record["id"]), record.get("walltime") or job.walltime
        job.stderr = Path(record["stderr"]) if record.get("stderr") else None
        initial = ParslState.RUNNING if self.config.provider == "local" else ParslState.PENDING
        with self._lock:
            self.provider.resources[job.provider_id] = {**record.get("resource", {}), "status": ParslStatus(initial)}
            self._queried_at = -math.inf
        return JobHandle(f"{self.config.provider}-{job.provider_id}", spec, submitted_at, job)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"(could not read {path}: {e})"


def _tail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - _TAIL_BYTES))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def _slurm_final_state(job_id: str) -> str:
    """Slurm's own final state of a job (CANCELLED, TIMEOUT, ...) while slurmctld still remembers it; else ''."""
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"\bJobState=(\S+)", shown.stdout)
    return match.group(1) if match else ""


def _process_group(pid: str) -> int | None:
    try:
        return os.getpgid(int(pid))
    except (ProcessLookupError, ValueError):
        return None


def _reap_group(pgid: int, grace_s: float) -> None:
    """Wait up to `grace_s` for process group `pgid` to end after Parsl's SIGTERM, then SIGKILL what is left."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
