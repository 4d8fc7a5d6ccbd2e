"""Run a facility's job on this machine under torchrun.

The embedded default: every facility is a ``torchrun --nproc-per-node N``
subprocess on loopback (gloo on CPU, or the local GPUs). Shape as in Parsl:
the command line and the environment are pure functions of strings
(`torchrun_command`, `job_environment`), and a failed job's stderr is turned
into a one-paragraph reason by `failure_reason`; the class only starts, polls
and stops processes.

A job runs in its own session, so its process group is the job. torchrun
itself starts every rank in a *new* session, so killing torchrun's group alone
could orphan the ranks; `cancel` therefore signals the groups of every process
below torchrun too (found through ``/proc``; elsewhere only torchrun's group).

Equivalent command line, for one job::

    GLOO_SOCKET_IFNAME=lo FEDHPC_DEVICE=auto python -m torch.distributed.run --no-python \\
        --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29517 python -m fedhpc worker --task T
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedhpc.config import LocalLauncherConfig
from fedhpc.errors import SubmitError
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
KILL_GRACE_S = 10.0
"""Seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of walltime."""
PORT_REUSE_AFTER_S = 120.0
"""A port handed to one job is not handed to another for this long (it is free again once torchrun exits)."""
REASON_LINES = 20
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


# torchrun's own stderr, told apart from the program's: its failure report starts at
# the agent's "failed (exitcode: N)" log line; banners and log lines before it are noise.
_REPORT_START = re.compile(r"torch/distributed/elastic/.*failed \(exitcode: -?\d+\)")
_ROOT_CAUSE = re.compile(r"Root Cause.*?\brank\s*:\s*(\d+).*?\bexitcode\s*:\s*(-?\d+)", re.S)
_TORCHRUN_NOISE = re.compile(
    r"^(\*{5,}$|Setting OMP_NUM_THREADS environment variable|[IWE]\d{4} [\d:.]+ \d+ \S*torch/distributed/)"
)


def failure_reason(stderr: str, returncode: int | None, max_lines: int = REASON_LINES) -> str:
    """Why a job failed, for the ledger: which rank failed first, then the program's last stderr lines."""
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
    """What a `JobHandle.native` holds for a local job. The job's process group id is ``process.pid``."""

    process: subprocess.Popen[bytes]
    command: list[str]
    port: int
    out_path: Path
    err_path: Path
    err_offset: int
    started: float = field(default_factory=time.monotonic)
    walltime_s: float | None = None
    final: JobStatus | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class LocalLauncher:
    """`Launcher` for jobs on this machine; see the module docstring."""

    def __init__(self, config: LocalLauncherConfig, *, kill_grace_s: float = KILL_GRACE_S):
        self.config = config
        self.kill_grace_s = kill_grace_s

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
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
                )
        except OSError as e:
            raise SubmitError(f"could not start job {job.name!r}: {e}") from e
        logger.info("started %s as pid %d on port %d: %s", job.name, process.pid, port, command)
        # The job's own limit and the facility's walltime (what a batch system would impose): the smaller wins.
        walltime = min((s for s in (job.walltime_s, self.config.walltime) if s is not None), default=None)
        native = LocalJob(process, command, port, out_path, err_path, err_offset, walltime_s=walltime)
        return JobHandle(job_id=f"local-{process.pid}", spec=job, submitted_at=time.time(), native=native)

    def poll(self, handle: JobHandle) -> JobStatus:
        """RUNNING while torchrun lives; a job past its walltime is stopped here and reported FAILED."""
        job = _local_job(handle)
        if job is None:
            return JobStatus(JobState.UNKNOWN, reason=f"{handle.job_id} was not started by this server process")
        with job.lock:
            if job.final is not None:
                return job.final
            returncode = job.process.poll()
            if returncode is None:
                overdue = job.walltime_s is not None and time.monotonic() - job.started > job.walltime_s
                if not overdue:
                    return JobStatus(JobState.RUNNING)
                logger.warning("%s exceeded its walltime of %g s; stopping it", handle.job_id, job.walltime_s)
                returncode = stop_process_tree(job.process, self.kill_grace_s)
                job.final = JobStatus(JobState.FAILED, returncode, f"walltime exceeded ({job.walltime_s:g} s)")
            elif returncode == 0:
                job.final = JobStatus(JobState.DONE, 0)
            else:
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
            if job.final is not None or job.process.poll() is not None:
                return
            returncode = stop_process_tree(job.process, self.kill_grace_s)
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


def stop_process_tree(process: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM the job's group and the groups of all its descendants; SIGKILL what is left after `grace_s`.

    Returns the job's exit status. Processes are found while torchrun is still
    their parent (orphans cannot be traced back), and a group is signalled only
    while a process seen in it is still there, so a reused id is not hit.
    """
    tree = {process.pid: process.pid, **_descendants(process.pid)}  # pid -> its process group
    for pgid in set(tree.values()):
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not _alive(tree):
            return process.returncode
        time.sleep(0.05)
    if process.poll() is None:
        tree.update(_descendants(process.pid))  # ranks spawned after the first look
    for pgid in set(_alive(tree).values()):
        _signal_group(pgid, signal.SIGKILL)
    return process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) from /proc; empty where there is no /proc."""
    table: dict[int, tuple[int, int, str]] = {}
    try:
        entries = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return table
    for name in entries:
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        table[int(name)] = (int(fields[1]), int(fields[2]), fields[0].decode())
    return table


def _descendants(root: int) -> dict[int, int]:
    """pid -> process group of every process below `root`, at this moment."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found[pid] = table[pid][1]
        stack.extend(children.get(pid, []))
    return found


def _alive(tree: dict[int, int]) -> dict[int, int]:
    """The members of `tree` still running in the same group (zombies count as gone)."""
    table = _process_table()
    if not table:  # no /proc: fall back on signal 0, which also sees zombies
        return {pid: pgid for pid, pgid in tree.items() if _exists(pid)}
    return {pid: pgid for pid, pgid in tree.items() if pid in table and table[pid][1] == pgid and table[pid][2] != "Z"}


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
