"""Each launcher, ready to use, with what its contract test needs to know about it.

A case makes the backend's launchers (a fresh one stands for a restarted server), the
jobs the contract runs (one that succeeds, one that fails with a known stderr, one
that runs until stopped), and drives a job on: real processes are waited for; at the
Globus Compute edge the registered function is run on this machine and its result
served back; on the simulated launcher's virtual clock, time is advanced.

The `launcher_case` fixture yields each case in turn. It lives here, not in a
conftest.py: a second ``conftest`` module would shadow tests/conftest.py for the
test modules that import from it (as this one imports test_facility_globus_compute).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from globus_compute_sdk.serialize import ComputeSerializer, JSONData
from conftest import processes_mentioning
from test_facility_globus_compute import ComputeApi, static_client, task_doc
from test_worker_run import MODEL

from fedhpc.clock import VirtualClock
from fedhpc.config import GlobusComputeLauncherConfig, LocalLauncherConfig, ParslLauncherConfig, SimulatedLauncherConfig
from fedhpc.exchange import WorkerTask
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus, Launcher
from fedhpc.facility.launchers.globus_compute import GlobusComputeLauncher
from fedhpc.facility.launchers.local import LocalLauncher
from fedhpc.facility.launchers.parsl import ParslLauncher
from fedhpc.simulate.launcher import SimulatedLauncher

PY = sys.executable
FAILS = "import sys; print('reading shard 7', file=sys.stderr); sys.exit('bad shard: /data/7.jsonl')"
BRIEF = "import time; time.sleep(0.3)"  # a moment: a restarted server must find it still running
# Every rank names itself (torchrun's RANK, mpiexec's PMI_RANK) in the directory it is given, then waits.
SLEEPS = textwrap.dedent(
    """
    import os, pathlib, sys, time
    rank = os.environ.get("RANK") or os.environ.get("PMI_RANK", "0")
    pathlib.Path(sys.argv[1], "rank" + rank).write_text(str(os.getpid()))
    time.sleep(120)
    """
)


def until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class LauncherCase:
    """One backend's launchers and jobs; subclasses fill them in.

    `failure` is the reason a job running `FAILS` ends with (a regular expression, matched whole),
    `failure_returncode` its exit status; `reattached_returncode` is the exit status a restarted
    server learns of a job it found again (None where the job was another process's child).
    A cancelled job has no exit status unless `cancel_keeps_returncode` (torchrun's, after the signals).
    `first_state` is what a job reports just after its submission (QUEUED until a scheduler says more).
    `replays_jobs`: a job is a function of its spec and submission time alone, so `reattach` re-creates
    any job it is asked for instead of finding it (the base contract's exception for virtual jobs).
    """

    failure: str
    failure_returncode: int | None = 1
    reattached_returncode: int | None = 0
    cancel_keeps_returncode: bool = False
    first_state: JobState = JobState.RUNNING
    replays_jobs: bool = False

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path

    def launcher(self, ranks: int = 1) -> Launcher:
        raise NotImplementedError

    def spec(self, name: str, program: str) -> JobSpec:
        """A job named `name` running one of BRIEF, FAILS, SLEEPS on every rank."""
        argv = [PY, "-c", program]
        if program == SLEEPS:
            (self.tmp_path / name).mkdir()
            argv.append(str(self.tmp_path / name))
        return JobSpec(name, argv, self.tmp_path / "logs")

    def finish(self, launcher: Launcher, handle: JobHandle, timeout: float = 30.0) -> JobStatus:
        """Poll until the job has ended; one still running after `timeout` is cancelled and fails the test."""
        deadline = time.monotonic() + timeout
        while not (status := launcher.poll(handle)).state.finished:
            if time.monotonic() > deadline:
                launcher.cancel(handle)
                raise AssertionError(f"{handle.job_id} still running after {timeout} s")
            time.sleep(0.05)
        return status

    def until_running(self, launcher: Launcher, handle: JobHandle, ranks: int = 1) -> None:
        """Wait for a `SLEEPS` job's ranks to have started."""
        marks = [Path(handle.spec.argv[-1], f"rank{rank}") for rank in range(ranks)]
        until(lambda: all(mark.exists() for mark in marks) or launcher.poll(handle).state.finished,
              f"ranks never started: {marks}")  # fmt: skip

    def left_running(self, handle: JobHandle) -> list[str]:
        """What of a cancelled `SLEEPS` job still runs here, once cancel has had 5 s to be done."""
        deadline = time.monotonic() + 5
        while (left := processes_mentioning(handle.spec.argv[-1])) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left


class LocalCase(LauncherCase):
    failure = r"rank 0 exited with code 1 \(first failure\); stderr tail:\n.*reading shard 7\nbad shard: /data/7\.jsonl"
    reattached_returncode = None  # another process's child: its exit status is not ours to read
    cancel_keeps_returncode = True

    def launcher(self, ranks: int = 1) -> Launcher:
        return LocalLauncher(LocalLauncherConfig(nprocs=ranks))

    def left_running(self, handle: JobHandle) -> list[str]:
        """torchrun's whole process group too, not only the ranks (each in its own session)."""
        try:
            os.killpg(handle.native.pid, 0)
            group = [f"process group {handle.native.pid}"]
        except ProcessLookupError:
            group = []
        return group + super().left_running(handle)


class ParslCase(LauncherCase):
    """Parsl's LocalProvider; two ranks are started by the PyPI mpich's mpiexec."""

    failure = r"exited with code 1; stderr tail:\nreading shard 7\nbad shard: /data/7\.jsonl"

    def launcher(self, ranks: int = 1) -> Launcher:
        mpi = {"mpi": {"launcher": "mpiexec"}, "ranks_per_node": ranks} if ranks > 1 else {}
        config = ParslLauncherConfig(provider="local", master_addr="127.0.0.1", device="cpu", status_interval=0.2,
                                     **mpi)  # fmt: skip
        return ParslLauncher(config, kill_grace_s=5)


class ComputeCase(LauncherCase):
    """Globus Compute at its HTTP edge (`ComputeApi`): a job runs when `finish` runs its registered function here."""

    failure = (r"exited with code 1; stderr tail:\nreading shard 7\nbad shard: /data/7\.jsonl\n"
               r".*\(the whole stderr is at the facility: .*/tasks/alpha-r0001-a0/alpha-r0001-a0\.err\)")  # fmt: skip
    first_state = JobState.QUEUED  # until the service reports the task

    def __init__(self, tmp_path: Path, mock: responses.RequestsMock):
        super().__init__(tmp_path)
        self.api = ComputeApi(mock)
        self.ran: set[str] = set()

    def launcher(self, ranks: int = 1) -> Launcher:
        mpi = {"mpi": {"launcher": "mpiexec"}, "ranks_per_node": ranks} if ranks > 1 else {}
        config = GlobusComputeLauncherConfig(endpoint_id=self.api.endpoint_id, python=PY, device="cpu",
                                             status_interval=0.01, function="shell", **mpi)  # fmt: skip
        return GlobusComputeLauncher(config, client=static_client(), sleep=lambda s: None, endpoint_check_s=3600)

    def spec(self, name: str, program: str) -> JobSpec:
        """The task's directory at the facility holds the function's whole output."""
        task = self.tmp_path / "staging" / "tasks" / name / "task.json"
        task.parent.mkdir(parents=True)
        return JobSpec(name, [PY, "-c", program], self.tmp_path / "logs", task=str(task))

    def finish(self, launcher: Launcher, handle: JobHandle, timeout: float = 30.0) -> JobStatus:
        """The endpoint runs the function registered for the job (once); the service then answers with its result."""
        if handle.spec.name not in self.ran:
            result = JSONData().deserialize(JSONData().serialize(self._registered(handle.spec.name)()))
            self.api.status(task_doc(self.api.task_id, "success", result=JSONData().serialize(result)))
            self.ran.add(handle.spec.name)
        time.sleep(0.011)  # past status_interval: the next poll asks the service
        return launcher.poll(handle)

    def until_running(self, launcher: Launcher, handle: JobHandle, ranks: int = 1) -> None:
        time.sleep(0.011)
        self.api.status(task_doc(self.api.task_id, "running"))

    def left_running(self, handle: JobHandle) -> list[str]:
        """Nothing runs here: the task runs at the endpoint."""
        return []

    def _registered(self, name: str) -> Any:
        """The function last registered for job `name`, read back as an endpoint reads it."""
        bodies = [b for b in self.api.bodies("/v3/functions") if b["description"] == f"fedhpc worker {name}"]
        body = bodies[-1]
        serializer = ComputeSerializer()
        (payload,) = serializer.unpack_buffers(body["function_code"])
        return serializer.deserialize(payload)


class SimulatedCase(LauncherCase):
    """The real worker in-process on a `VirtualClock`; it runs only worker tasks, so each job is one.

    BRIEF is an init task (the cheapest the worker has), FAILS a task file that is not
    there, SLEEPS a task whose drawn duration is past its walltime (the worker is never run for it).
    """

    failure = r"/.*/alpha-r0001-a0/missing/task\.json: cannot read the task file: No such file or directory"
    first_state = JobState.QUEUED  # for its drawn queue wait
    replays_jobs = True
    CONFIG = SimulatedLauncherConfig(seconds_per_step=2.0, queue_wait={"uniform": [0, 1200]}, startup=20)

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        self.clock = VirtualClock(1_000_000.0)

    def launcher(self, ranks: int = 1) -> Launcher:
        return SimulatedLauncher(self.CONFIG, self.clock)

    def spec(self, name: str, program: str) -> JobSpec:
        task = self.tmp_path / name / "task.json"
        walltime = None
        if program == FAILS:
            task = self.tmp_path / name / "missing" / "task.json"
        else:
            WorkerTask(mode="init", round=0, facility="alpha", update_dir=self.tmp_path / name / "r0000", model=MODEL,
                       device="cpu").write(task)  # fmt: skip
            walltime = 1.0 if program == SLEEPS else None
        return JobSpec(name, [PY, "-m", "fedhpc", "worker", "--task", str(task)], self.tmp_path / "logs",
                       walltime_s=walltime)  # fmt: skip

    def finish(self, launcher: Launcher, handle: JobHandle, timeout: float = 30.0) -> JobStatus:
        while not (status := launcher.poll(handle)).state.finished:
            self.clock.sleep_until(None)
        return status

    def until_running(self, launcher: Launcher, handle: JobHandle, ranks: int = 1) -> None:
        self.clock.advance_to(handle.native.starts_at)

    def left_running(self, handle: JobHandle) -> list[str]:
        """Nothing runs: the job's time is virtual."""
        return []


def matches(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text, re.DOTALL) is not None


@pytest.fixture(params=["local", "parsl-local", "globus-compute", "simulated"])
def launcher_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LauncherCase]:
    """Each launcher in turn; Globus Compute's HTTP edge is up while the test runs."""
    backend = request.param
    if backend == "local":
        yield LocalCase(tmp_path)
    elif backend == "parsl-local":
        yield ParslCase(tmp_path)
    elif backend == "globus-compute":
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            yield ComputeCase(tmp_path, mock)
    else:
        yield SimulatedCase(tmp_path)
