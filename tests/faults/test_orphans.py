"""A server killed with SIGKILL leaves no process behind, unless the user asked jobs to outlive it.

Each case starts a real "server" (a small driver process that submits a local
job, or runs a server command, the way the server does), SIGKILLs it, and
checks what is left through /proc: torchrun and every rank gone within a few
seconds, or, with ``outlive_server``, still running and found again by a new
launcher through its pid and start time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_finished
from fedhpc.config import LocalLauncherConfig
from fedhpc.facility.base import JobSpec, JobState, JobStatus
from fedhpc.facility.launchers.local import UNKNOWN_EXIT, LocalLauncher

PY = sys.executable
GONE_WITHIN_S = 10.0
JOB = "alpha-r0001-a0"

# A rank that records its pid, then sleeps until `release` appears (or ten minutes pass).
RANK = textwrap.dedent(
    """
    import os, pathlib, sys, time
    here = pathlib.Path(sys.argv[1])
    (here / ("rank%s.pid" % os.environ["RANK"])).write_text(str(os.getpid()))
    deadline = time.time() + 600
    while not (here / "release").exists() and time.time() < deadline:
        time.sleep(0.1)
    """
)

# The "server": submits one two-rank job, prints torchrun's pid, and waits to be killed.
SUBMITTING_SERVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from fedhpc.config import LocalLauncherConfig
    from fedhpc.facility.base import JobSpec
    from fedhpc.facility.launchers.local import LocalLauncher

    log_dir, outlive, argv = Path(sys.argv[1]), sys.argv[2] == "outlive", json.loads(sys.argv[3])
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=2), outlive_server=outlive)
    handle = launcher.submit(JobSpec(sys.argv[4], argv, log_dir))
    print(handle.native.pid, flush=True)
    time.sleep(600)
    """
)

# The "server" running a server command (as it runs the round-0 init worker): blocks until killed.
COMMAND_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from fedhpc.run.server_command import run_server_command

    run_server_command("init", sys.argv[2:], Path(sys.argv[1]))
    """
)


def start_time(pid: int) -> int | None:
    """The process's start time while it runs (not a zombie); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    if int(stat.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry.name))
            except (FileNotFoundError, IndexError):
                continue
    return found


def heartbeat_state(inbox: Path) -> str | None:
    try:
        return json.loads((inbox / "heartbeat.json").read_text())["state"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


class Processes:
    """Processes a test saw; any still running at the end are killed, so a failing test leaks nothing."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def watch(self, *pids: int) -> list[int]:
        for pid in pids:
            started = start_time(pid)
            if started is not None:
                self.seen[pid] = started
        return list(pids)

    def running(self) -> list[int]:
        return [pid for pid, started in self.seen.items() if start_time(pid) == started]

    def kill_all(self) -> None:
        for pid in self.running():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes() -> Iterator[Processes]:
    watched = Processes()
    yield watched
    watched.kill_all()


def submit_then_kill(tmp_path: Path, processes: Processes, outlive: bool) -> tuple[int, list[int]]:
    """Start the submitting server, wait for both ranks, SIGKILL the server; return torchrun's and the ranks' pids."""
    argv = [PY, "-c", RANK, str(tmp_path)]
    server = subprocess.Popen(
        [PY, "-c", SUBMITTING_SERVER, str(tmp_path / "logs"), "outlive" if outlive else "die", json.dumps(argv), JOB],
        stdout=subprocess.PIPE,
    )
    processes.watch(server.pid)
    torchrun = int(server.stdout.readline())
    processes.watch(torchrun)
    pid_files = [tmp_path / "rank0.pid", tmp_path / "rank1.pid"]
    wait_until(lambda: all(p.exists() and p.read_text() for p in pid_files), 60, "the ranks never started")
    ranks = processes.watch(*(int(p.read_text()) for p in pid_files))
    server.kill()
    server.wait()
    server.stdout.close()
    return torchrun, ranks


def test_a_killed_server_takes_torchrun_and_every_rank_with_it(tmp_path, processes):
    torchrun, ranks = submit_then_kill(tmp_path, processes, outlive=False)
    seconds = wait_until(lambda: not processes.running(), GONE_WITHIN_S, f"left running: {processes.running()}")
    print(f"torchrun and {len(ranks)} ranks gone {seconds:.2f} s after the server's SIGKILL")


def test_a_killed_server_takes_its_server_command_with_it(tmp_path, processes):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    argv = ["worker", "--persistent", "--inbox", str(inbox), "--idle-timeout", "600", "--device", "cpu"]
    server = subprocess.Popen([PY, "-c", COMMAND_SERVER, str(tmp_path / "logs"), *argv])
    processes.watch(server.pid)
    wait_until(lambda: children(server.pid), 30, "the server command never started")
    command = processes.watch(*children(server.pid))
    server.kill()
    server.wait()
    wait_until(lambda: not processes.running(), GONE_WITHIN_S, f"server command {command} left running")


def test_a_rank_dies_with_its_torchrun(tmp_path, processes):
    # torchrun SIGKILLed (the OOM killer, a user): its elastic agent cannot stop the ranks, each stops itself.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    argv = [PY, "-m", "fedhpc", "worker", "--persistent", "--inbox", str(inbox), "--idle-timeout", "600",
            "--heartbeat-interval", "0.2", "--device", "cpu"]  # fmt: skip
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=2, device="cpu", threads_per_rank=1))
    handle = launcher.submit(JobSpec("alpha-w0001", argv, tmp_path / "logs"))
    torchrun = handle.native.pid
    processes.watch(torchrun)
    # Idle means the process group formed: every rank is past its start-up check and holds the parent-death signal.
    # (A rank still starting when torchrun dies stops at that check instead: tests/test_lifeline.py.)
    wait_until(lambda: heartbeat_state(inbox) == "idle", 120, "the persistent worker never went idle")
    ranks = processes.watch(*children(torchrun))
    assert len(ranks) == 2
    os.kill(torchrun, signal.SIGKILL)
    wait_until(lambda: not processes.running(), GONE_WITHIN_S, f"ranks {processes.running()} outlived torchrun")
    # A thread of the launcher may be reaping torchrun at this moment (Popen.poll then answers "unknown yet"),
    # so the job is read as ended on the next poll or so, not necessarily on the first.
    wait_until(lambda: launcher.poll(handle).state.finished, 10, "the launcher never saw torchrun end")
    assert launcher.poll(handle).returncode == -signal.SIGKILL


def test_outlive_server_keeps_the_job_and_a_new_launcher_reattaches_and_cancels_it(tmp_path, processes):
    torchrun, ranks = submit_then_kill(tmp_path, processes, outlive=True)
    time.sleep(1.0)  # longer than a parent-death signal takes
    assert sorted(processes.running()) == sorted([torchrun, *ranks]), "the job did not outlive the server"

    spec = JobSpec(JOB, [PY, "-c", RANK, str(tmp_path)], tmp_path / "logs")
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=2), kill_grace_s=2.0)
    handle = launcher.reattach(spec, submitted_at=123.0)
    assert handle is not None
    assert (handle.job_id, handle.submitted_at, handle.spec) == (f"local-{torchrun}", 123.0, spec)
    assert launcher.poll(handle) == JobStatus(JobState.RUNNING)

    launcher.cancel(handle)
    assert launcher.poll(handle).state is JobState.CANCELLED
    wait_until(lambda: not processes.running(), GONE_WITHIN_S, f"cancel left {processes.running()} running")
    assert launcher.reattach(spec, submitted_at=123.0) is None  # gone: a resumed server relaunches or collects


def test_a_reattached_job_that_ends_is_done_with_an_unknown_exit_status(tmp_path, processes):
    submit_then_kill(tmp_path, processes, outlive=True)
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=2))
    handle = launcher.reattach(JobSpec(JOB, [], tmp_path / "logs"), submitted_at=0.0)
    assert handle is not None and launcher.poll(handle).state is JobState.RUNNING
    (tmp_path / "release").touch()
    assert wait_finished(launcher, handle) == JobStatus(JobState.DONE, None, UNKNOWN_EXIT)
    launcher.cancel(handle)  # over: keeps its outcome, signals nothing
    assert launcher.poll(handle) == JobStatus(JobState.DONE, None, UNKNOWN_EXIT)
