"""Run a facility's job on this machine under torchrun.

The embedded default: every facility is a ``torchrun --nproc-per-node N``
subprocess on loopback (gloo on CPU, or the local GPUs). Shape as in Parsl:
the command line and the environment are pure functions of strings
(`torchrun_command`, `job_environment`), and a failed job's stderr is turned
into a one-paragraph reason by `base.failure_reason`; the class only starts, polls
and stops processes.

A job runs in its own session, so its process group is the job. torchrun
itself starts every rank in a *new* session, so killing torchrun's group alone
could orphan the ranks; `cancel` therefore signals the groups of every process
below torchrun too (`process_tree`: found through ``/proc``; elsewhere only
torchrun's group).

Jobs die with the server (`fedhpc.lifeline`): torchrun gets SIGTERM when the
server exits, however it exits (SIGKILL included), and its elastic agent then
stops the ranks; each rank also gets SIGKILL if torchrun itself dies, since a
parent-death signal does not reach the ranks of a SIGKILLed torchrun. With
``outlive_server=True`` (``fedhpc run --on-interrupt keep``) torchrun is not
tied to the server, and a later server finds the job again through
`reattach`: every job leaves ``<log_dir>/<name>.local.json`` (pid, process
group, start time, command, port), and a pid counts as the job only while its
start time (``/proc/<pid>/stat`` field 22) is the recorded one, so a reused pid
is never taken for the job nor signalled.

Equivalent command line, for one job::

    GLOO_SOCKET_IFNAME=lo FEDHPC_DEVICE=auto python -m torch.distributed.run --no-python \\
        --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29517 python -m fedhpc worker --task T
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhpc.atomic_files import atomic_write_json
from fedhpc.config import LocalLauncherConfig
from fedhpc.errors import SubmitError
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus, Launcher, failure_reason
from fedhpc.facility.launchers import process_tree
from fedhpc.lifeline import spawn, with_lifeline

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
KILL_GRACE_S = 10.0
"""Seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of walltime."""
PORT_REUSE_AFTER_S = 120.0
"""A port handed to one job is not handed to another for this long (it is free again once torchrun exits)."""
SIDECAR_SUFFIX = ".local.json"
"""``<log_dir>/<job name>.local.json``: what a later server needs to find the job again."""
UNKNOWN_EXIT = "reattached after a server restart, so its exit status is unknown (the job is gone)"
_ERR_TAIL_BYTES = 64 * 1024


def torchrun_command(
    argv: Sequence[str], nprocs: int, master_port: int, master_addr: str = LOOPBACK, python: str = sys.executable
) -> list[str]:
    """The command that starts `argv` on `nprocs` local ranks (``--no-python``: argv[0] is the program)."""
    return [
        python, "-m", "torch.distributed.run", "--no-python",
        "--nproc-per-node", str(nprocs),
        "--master-addr", master_addr,
        "--master-port", str(master_port),
        *argv,
    ]  # fmt: skip


def job_environment(
    server_env: Mapping[str, str], config: LocalLauncherConfig, job_env: Mapping[str, str]
) -> dict[str, str]:
    """The job's environment; later sources win: server, fedhpc defaults, ``config.env``, ``job.env``.

    Gloo is pinned to loopback unless the server already chose an interface;
    ``CUDA_VISIBLE_DEVICES`` passes through untouched (the server's choice).
    """
    env = dict(server_env)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if config.threads_per_rank is not None:
        env["OMP_NUM_THREADS"] = str(config.threads_per_rank)
    env["FEDHPC_DEVICE"] = config.device
    env.update(config.env)
    env.update(job_env)
    return env


class _PortBook:
    """Free loopback ports, never the same one twice within `PORT_REUSE_AFTER_S` (one book per server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handed_out: dict[int, float] = {}

    def take(self, host: str = LOOPBACK, attempts: int = 64) -> int:
        with self._lock:
            now = time.monotonic()
            self._handed_out = {p: t for p, t in self._handed_out.items() if now - t < PORT_REUSE_AFTER_S}
            for _ in range(attempts):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, 0))
                    port = probe.getsockname()[1]
                if port not in self._handed_out:
                    self._handed_out[port] = now
                    return port
        raise SubmitError(f"no free TCP port on {host} after {attempts} tries")


_PORTS = _PortBook()


def pick_free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now and that no other job of this server was given recently."""
    return _PORTS.take(host)


@dataclass
class LocalJob:
    """What a `JobHandle.native` holds for a local job. The job's process group id is `pid`.

    `process` is None for a job reattached from an earlier server process: not
    this process's child, so it is watched through ``/proc`` and its exit status is unknown.
    """

    process: subprocess.Popen[bytes] | None
    pid: int
    start_time: int | None  # /proc/<pid>/stat field 22; None where there is no /proc
    command: list[str]
    port: int
    out_path: Path
    err_path: Path
    err_offset: int
    started: float = field(default_factory=time.monotonic)
    walltime_s: float | None = None
    final: JobStatus | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ended(self) -> bool:
        """torchrun has exited; for a reattached job, its pid no longer has the recorded start time."""
        if self.process is not None:
            return self.process.poll() is not None
        return process_tree.start_time(self.pid) != self.start_time

    def wait(self) -> int | None:
        """Reap torchrun and return its exit status; None for a reattached job (another process's child)."""
        return self.process.wait() if self.process is not None else None


class LocalLauncher(Launcher):
    """`Launcher` for jobs on this machine; see the module docstring."""

    def __init__(
        self, config: LocalLauncherConfig, *, kill_grace_s: float = KILL_GRACE_S, outlive_server: bool = False
    ):
        """`outlive_server`: leave jobs running when the server exits (no parent-death signal)."""
        self.config = config
        self.kill_grace_s = kill_grace_s
        self.outlive_server = outlive_server

    def submit(self, job: JobSpec) -> JobHandle:
        if not job.name or os.sep in job.name or job.name.startswith("."):
            raise SubmitError(f"job name {job.name!r} must be a plain file name (it names the log files)")
        port = pick_free_port()
        command = torchrun_command(job.argv, self.config.nprocs, port)
        env = job_environment(os.environ, self.config, job.env)
        log_dir = Path(job.log_dir)
        out_path, err_path = log_dir / f"{job.name}.out", log_dir / f"{job.name}.err"
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            # Append, so a resubmitted job keeps its earlier attempt's logs; the reason reads from err_offset.
            with open(out_path, "ab") as out, open(err_path, "ab") as err:
                err_offset = err.tell()
                tied = with_lifeline(command, None if self.outlive_server else signal.SIGTERM)
                process = spawn(tied, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as e:
            raise SubmitError(f"could not start job {job.name!r}: {e}") from e
        logger.info("started %s as pid %d on port %d: %s", job.name, process.pid, port, command)
        submitted_at = time.time()
        start_time = process_tree.start_time(process.pid)
        _write_sidecar(log_dir / f"{job.name}{SIDECAR_SUFFIX}", {
            "pid": process.pid, "pgid": process.pid, "start_time": start_time, "command": command, "port": port,
            "submitted_at": submitted_at,
        })  # fmt: skip
        native = LocalJob(process, process.pid, start_time, command, port, out_path, err_path, err_offset,
                          walltime_s=self._walltime(job))
        return JobHandle(job_id=f"local-{process.pid}", spec=job, submitted_at=submitted_at, native=native)

    def reattach(self, spec: JobSpec, submitted_at: float) -> JobHandle | None:
        """The handle of `spec`'s job started by an earlier server process, if it still runs; else None.

        The job is the one its sidecar names only while that pid has the recorded
        start time; a job that ended, or a pid reused since, gives None.
        """
        log_dir = Path(spec.log_dir)
        record = _read_sidecar(log_dir / f"{spec.name}{SIDECAR_SUFFIX}")
        if record is None or record["start_time"] is None:
            return None
        pid, start_time = record["pid"], record["start_time"]
        if process_tree.start_time(pid) != start_time:
            return None
        # The walltime runs from the job's start, on the monotonic clock of this process.
        started = time.monotonic() - max(0.0, time.time() - record["submitted_at"])
        native = LocalJob(None, pid, start_time, record["command"], record["port"], log_dir / f"{spec.name}.out",
                          log_dir / f"{spec.name}.err", 0, started=started, walltime_s=self._walltime(spec))
        logger.info("reattached %s: pid %d, started by an earlier server", spec.name, pid)
        return JobHandle(job_id=f"local-{pid}", spec=spec, submitted_at=submitted_at, native=native)

    def _walltime(self, job: JobSpec) -> float | None:
        """The job's own limit and the facility's walltime (what a batch system would impose): the smaller wins."""
        return min((s for s in (job.walltime_s, self.config.walltime) if s is not None), default=None)

    def poll(self, handle: JobHandle) -> JobStatus:
        """RUNNING while torchrun lives; a job past its walltime is stopped here and reported FAILED.

        A reattached job that is gone is DONE with no return code: the server then
        collects its update if it published one, or records it missing.
        """
        job = _local_job(handle)
        if job is None:
            return JobStatus(JobState.UNKNOWN, reason=f"{handle.job_id} was not started by this server process")
        with job.lock:
            if job.final is not None:
                return job.final
            if not job.ended():
                overdue = job.walltime_s is not None and time.monotonic() - job.started > job.walltime_s
                if not overdue:
                    return JobStatus(JobState.RUNNING)
                logger.warning("%s exceeded its walltime of %g s; stopping it", handle.job_id, job.walltime_s)
                returncode = process_tree.stop_tree(job, self.kill_grace_s)
                job.final = JobStatus(JobState.FAILED, returncode, f"walltime exceeded ({job.walltime_s:g} s)")
            elif job.process is None:
                job.final = JobStatus(JobState.DONE, None, UNKNOWN_EXIT)
            elif job.process.returncode == 0:
                job.final = JobStatus(JobState.DONE, 0)
            else:
                returncode = job.process.returncode
                job.final = JobStatus(JobState.FAILED, returncode, failure_reason(_read_err(job), returncode))
            return job.final

    def cancel(self, handle: JobHandle) -> None:
        """Stop the job and every rank (SIGTERM, then SIGKILL after the grace period); idempotent.

        Blocks until the processes are gone. A job that had already ended keeps its own outcome.
        """
        job = _local_job(handle)
        if job is None:
            logger.warning("cannot cancel %s: not started by this server process", handle.job_id)
            return
        with job.lock:
            if job.final is not None or job.ended():
                return
            returncode = process_tree.stop_tree(job, self.kill_grace_s)
            job.final = JobStatus(JobState.CANCELLED, returncode, "cancelled")


def _local_job(handle: JobHandle) -> LocalJob | None:
    return handle.native if isinstance(handle.native, LocalJob) else None


def _read_err(job: LocalJob) -> str:
    try:
        with open(job.err_path, "rb") as err:
            size = err.seek(0, os.SEEK_END)
            err.seek(max(job.err_offset, size - _ERR_TAIL_BYTES))
            return err.read().decode(errors="replace")
    except OSError as e:
        return f"(could not read {job.err_path}: {e})"


def _write_sidecar(path: Path, record: dict[str, Any]) -> None:
    """Write the job's record atomically: a later server reads either all of it or nothing."""
    try:
        atomic_write_json(path, record)
    except OSError as e:
        logger.warning("cannot write %s (a restarted server will not find this job): %s", path, e)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The record `_write_sidecar` left, or None when it is missing or not one (then nothing is reattached)."""
    try:
        record = json.loads(path.read_text())
        checked = {
            "pid": int(record["pid"]),
            "start_time": None if record["start_time"] is None else int(record["start_time"]),
            "command": [str(part) for part in record["command"]],
            "port": int(record["port"]),
            "submitted_at": float(record["submitted_at"]),
        }
    except (OSError, ValueError, TypeError, KeyError) as e:
        if not isinstance(e, FileNotFoundError):
            logger.warning("ignoring %s, which is not a local job record: %s", path, e)
        return None
    return checked
