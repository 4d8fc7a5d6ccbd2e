"""The local launcher: pure command/environment builders, and real torchrun jobs on loopback.

What every launcher promises (a failing job's reason, cancel, reattach, foreign handles) is asked of this one
in tests/contracts/test_launcher_contract.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_finished
from fedhpc.config import LocalLauncherConfig
from fedhpc.errors import SubmitError
from fedhpc.facility.base import JobSpec, JobState, JobStatus, failure_reason
from fedhpc.facility.launchers.local import (
    SIDECAR_SUFFIX,
    LocalLauncher,
    job_environment,
    pick_free_port,
    torchrun_command,
)

PY = sys.executable


def wait_for_files(paths: list[Path], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.read_text().strip() for p in paths):
        assert time.monotonic() < deadline, f"ranks never started: {paths}"
        time.sleep(0.05)


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's zombie may wait for a slow init)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# A rank that records its pid, then waits to be stopped.
SLEEPER = textwrap.dedent(
    """
    import os, pathlib, signal, sys, time
    if sys.argv[1] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path(sys.argv[2], "rank%s.pid" % os.environ["RANK"]).write_text(str(os.getpid()))
    time.sleep(120)
    """
)


# ---- pure pieces ---------------------------------------------------------------------------------


def test_torchrun_command_wraps_one_rank_program():
    command = torchrun_command(["prog", "--task", "t.json"], nprocs=2, master_port=29517, python="/py")
    assert command == [
        "/py", "-m", "torch.distributed.run", "--no-python",
        "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", "29517",
        "prog", "--task", "t.json",
    ]  # fmt: skip


def test_job_environment_layers_server_defaults_config_and_job():
    server = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1,3", "FEDHPC_DEVICE": "stale"}
    config = LocalLauncherConfig(device="cpu", threads_per_rank=3, env={"A": "config", "B": "config"})
    env = job_environment(server, config, {"B": "job"})
    assert env == {
        "PATH": "/bin",
        "CUDA_VISIBLE_DEVICES": "1,3",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "3",
        "FEDHPC_DEVICE": "cpu",
        "A": "config",
        "B": "job",
    }
    assert server == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1,3", "FEDHPC_DEVICE": "stale"}


def test_job_environment_keeps_the_servers_interface_and_threads():
    env = job_environment({"GLOO_SOCKET_IFNAME": "ib0", "OMP_NUM_THREADS": "8"}, LocalLauncherConfig(), {})
    assert env["GLOO_SOCKET_IFNAME"] == "ib0"
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["FEDHPC_DEVICE"] == "auto"
    assert "CUDA_VISIBLE_DEVICES" not in env


# What torch 2.x's torchrun writes to stderr when a rank exits with code 3 (abridged traceback).
TORCHRUN_STDERR = """\

*****************************************
Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed.
*****************************************
Traceback (most recent call last):
  File "worker.py", line 3, in <module>
ValueError: data file is empty
W1124 23:28:02.800000 6434 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 6468 closing signal SIGTERM
E1124 23:28:02.810000 6434 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 3) local_rank: 0 (pid: 6467) of binary: /usr/bin/python
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
worker.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-24_23:28:02
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 3 (pid: 6467)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def test_failure_reason_names_the_rank_and_keeps_the_programs_stderr():
    assert failure_reason(TORCHRUN_STDERR, 1) == (
        "rank 0 exited with code 3 (first failure); stderr tail:\n"
        "Traceback (most recent call last):\n"
        '  File "worker.py", line 3, in <module>\n'
        "ValueError: data file is empty"
    )


def test_failure_reason_without_a_torchrun_report_keeps_the_last_lines():
    stderr = "".join(f"line {i}\n" for i in range(30)) + "torch.distributed.DistNetworkError: address in use\n"
    reason = failure_reason(stderr, 1, max_lines=3)
    assert reason == (
        "exited with code 1; stderr tail:\nline 28\nline 29\ntorch.distributed.DistNetworkError: address in use"
    )
    assert failure_reason("", -9) == "exited with code -9; nothing on stderr"
    killed = TORCHRUN_STDERR.replace("exitcode  : 3", "exitcode  : -9")
    assert failure_reason(killed, 1).startswith("rank 0 was killed by signal 9 (first failure)")


def test_free_ports_are_not_handed_out_twice():
    ports = [pick_free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)


# ---- real jobs -----------------------------------------------------------------------------------


def test_cancel_kills_ranks_that_ignore_sigterm(tmp_path):
    # torchrun starts each rank in its own session, so only signalling their groups reaches them.
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=2), kill_grace_s=1.0)
    handle = launcher.submit(JobSpec("delta", [PY, "-c", SLEEPER, "ignore-term", str(tmp_path)], tmp_path))
    pid_files = [tmp_path / "rank0.pid", tmp_path / "rank1.pid"]
    wait_for_files(pid_files)
    ranks = [int(p.read_text()) for p in pid_files]
    assert all(os.getpgid(pid) != handle.native.process.pid for pid in ranks)

    launcher.cancel(handle)
    assert launcher.poll(handle).state is JobState.CANCELLED
    assert group_gone(handle.native.process.pid)
    deadline = time.monotonic() + 5  # SIGKILLed orphans are reaped by init
    while any(running(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(pid) for pid in ranks)


def test_walltime_exceeded_stops_the_job_and_fails_it(tmp_path):
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=1))
    spec = JobSpec("eps", [PY, "-c", SLEEPER, "term", str(tmp_path)], tmp_path, walltime_s=1.5)
    handle = launcher.submit(spec)
    status = wait_finished(launcher, handle)
    assert status.state is JobState.FAILED
    assert status.reason == "walltime exceeded (1.5 s)"
    assert group_gone(handle.native.process.pid)
    launcher.cancel(handle)  # already over: keeps its outcome
    assert launcher.poll(handle) == status


@pytest.mark.parametrize(("config_walltime", "job_walltime", "expected"), [(1.0, None, 1.0), (1.0, 60.0, 1.0),
                                                                          (60.0, 1.0, 1.0)])
def test_the_facility_walltime_and_the_jobs_own_limit_the_smaller_wins(tmp_path, config_walltime, job_walltime,
                                                                       expected):
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=1, walltime=config_walltime))
    spec = JobSpec("eps", [PY, "-c", SLEEPER, "term", str(tmp_path)], tmp_path, walltime_s=job_walltime)
    status = wait_finished(launcher, launcher.submit(spec))
    assert status.state is JobState.FAILED
    assert status.reason == f"walltime exceeded ({expected:g} s)"


def test_two_jobs_side_by_side_get_their_own_ports_and_each_rank_its_environment(tmp_path):
    """Two facilities' jobs at once (one of two ranks): each on its own port, every rank told its place."""
    program = (
        "import os; e = os.environ; print(e['RANK'], e['WORLD_SIZE'], e['FEDHPC_DEVICE'], e['GLOO_SOCKET_IFNAME'], "
        "e['OMP_NUM_THREADS'], e['X'], e['MASTER_PORT'])"
    )
    alpha = LocalLauncher(LocalLauncherConfig(nprocs=2, device="cpu", threads_per_rank=1, env={"X": "config"}))
    beta = LocalLauncher(LocalLauncherConfig(nprocs=1, device="cpu", threads_per_rank=1, env={"X": "config"}))
    first = alpha.submit(JobSpec("alpha-r0001", [PY, "-c", program], tmp_path / "logs", env={"X": "job"}))
    second = beta.submit(JobSpec("beta-r0001", [PY, "-c", program], tmp_path / "logs"))
    assert first.job_id == f"local-{first.native.process.pid}"
    assert first.native.port != second.native.port
    assert alpha.poll(first).state in (JobState.RUNNING, JobState.DONE)
    assert wait_finished(alpha, first) == JobStatus(JobState.DONE, 0)
    assert wait_finished(beta, second) == JobStatus(JobState.DONE, 0)
    out = (tmp_path / "logs" / "alpha-r0001.out").read_text().splitlines()
    assert sorted(out) == [f"0 2 cpu lo 1 job {first.native.port}", f"1 2 cpu lo 1 job {first.native.port}"]
    assert (tmp_path / "logs" / "beta-r0001.out").read_text().strip() == f"0 1 cpu lo 1 config {second.native.port}"
    assert (tmp_path / "logs" / "alpha-r0001.err").exists()
    assert alpha.poll(first) == JobStatus(JobState.DONE, 0)


def test_a_resubmitted_job_appends_its_logs_and_reasons_from_its_own_attempt(tmp_path):
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=1))
    failing = "import sys; sys.exit('first attempt broke')"
    first = launcher.submit(JobSpec("zeta", [PY, "-c", failing], tmp_path))
    assert wait_finished(launcher, first).state is JobState.FAILED
    status = wait_finished(launcher, launcher.submit(JobSpec("zeta", [PY, "-c", "import sys; sys.exit(4)"], tmp_path)))
    assert status.state is JobState.FAILED
    assert "first attempt broke" not in status.reason
    assert "first attempt broke" in (tmp_path / "zeta.err").read_text()


def test_a_log_directory_that_cannot_be_made_fails_the_submission(tmp_path):
    launcher = LocalLauncher(LocalLauncherConfig())
    (tmp_path / "file").write_text("")
    with pytest.raises(SubmitError, match="could not start job 'x'"):
        launcher.submit(JobSpec("x", [PY, "-c", "pass"], tmp_path / "file" / "logs"))


# ---- tied to the server, and found again by a later one ------------------------------------------


def proc_start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[19])


def test_submit_leaves_a_sidecar_naming_the_job_by_pid_and_start_time(tmp_path):
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=1))
    handle = launcher.submit(JobSpec("alpha-r0001-a0", [PY, "-c", SLEEPER, "term", str(tmp_path)], tmp_path / "logs"))
    try:
        record = json.loads((tmp_path / "logs" / f"alpha-r0001-a0{SIDECAR_SUFFIX}").read_text())
        pid = handle.native.pid
        assert record == {
            "pid": pid, "pgid": os.getpgid(pid), "start_time": proc_start_time(pid), "command": handle.native.command,
            "port": handle.native.port, "submitted_at": handle.submitted_at,
        }  # fmt: skip
        assert record["pgid"] == pid
        assert record["command"][1:4] == ["-m", "torch.distributed.run", "--no-python"]
        assert not list((tmp_path / "logs").glob(".*partial"))
    finally:
        launcher.cancel(handle)


def test_reattach_needs_the_recorded_start_time_so_a_reused_pid_is_not_the_job(tmp_path):
    stranger = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])  # holds the pid a job once had
    try:
        spec = JobSpec("beta-r0002-a0", [PY, "-c", "pass"], tmp_path)
        sidecar = tmp_path / f"beta-r0002-a0{SIDECAR_SUFFIX}"
        record = {"pid": stranger.pid, "pgid": stranger.pid, "start_time": proc_start_time(stranger.pid) - 1,
                  "command": ["torchrun"], "port": 29500, "submitted_at": time.time()}
        sidecar.write_text(json.dumps(record))
        launcher = LocalLauncher(LocalLauncherConfig(nprocs=1))
        assert launcher.reattach(spec, submitted_at=1.0) is None

        sidecar.write_text(json.dumps({**record, "start_time": proc_start_time(stranger.pid)}))
        handle = launcher.reattach(spec, submitted_at=1.0)
        assert handle is not None and launcher.poll(handle).state is JobState.RUNNING
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("content", [None, "", "{", "[]", '{"pid": 1}', '{"pid": "x", "start_time": 1, "command": [],'
                                     ' "port": 1, "submitted_at": 0}'])
def test_reattach_without_a_readable_sidecar_finds_nothing(tmp_path, content):
    if content is not None:
        (tmp_path / f"gamma{SIDECAR_SUFFIX}").write_text(content)
    assert LocalLauncher(LocalLauncherConfig()).reattach(JobSpec("gamma", [], tmp_path), submitted_at=0.0) is None


def test_a_job_submitted_from_a_thread_that_ends_keeps_running(tmp_path):
    # The kernel sends the parent-death signal when the *thread* that forked the child exits.
    launcher = LocalLauncher(LocalLauncherConfig(nprocs=1))
    handles = []

    def submit_then_end() -> None:
        handles.append(launcher.submit(JobSpec("eta", [PY, "-c", SLEEPER, "term", str(tmp_path)], tmp_path)))
        time.sleep(1.0)  # the job has asked for its signal by now

    submitter = threading.Thread(target=submit_then_end)
    submitter.start()
    submitter.join()
    wait_for_files([tmp_path / "rank0.pid"])
    rank = int((tmp_path / "rank0.pid").read_text())
    time.sleep(0.5)
    assert launcher.poll(handles[0]).state is JobState.RUNNING
    assert running(rank)
    launcher.cancel(handles[0])
    assert not running(rank)
