"""`PersistentLauncher` against a fake pilot job: the test plays the worker by writing its inbox files.

The real worker and real processes are covered by test_worker_persistent.py and
test_persistent_e2e.py; here every state change is made by hand, on a clock the
test moves, so each rule (heartbeat timeout, restarts, ids, cancel, close) is
pinned without waiting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import fedhpc.facility.launchers.persistent as persistent_module
from fedhpc.config import FilesystemMoverConfig, ModelConfig, PersistentConfig
from fedhpc.errors import SubmitError
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus, Launcher
from fedhpc.facility.launchers.persistent import PersistentLauncher
from fedhpc.facility.movers.filesystem import FilesystemMover


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


class FakeInner(Launcher):
    """A launcher whose jobs run until the test says otherwise."""

    def __init__(self) -> None:
        self.handles: list[JobHandle] = []
        self.states: dict[str, JobStatus] = {}
        self.cancelled: list[str] = []

    def submit(self, job: JobSpec) -> JobHandle:
        handle = JobHandle(f"fake-{len(self.handles) + 1}", job, 0.0)
        self.handles.append(handle)
        self.states[handle.job_id] = JobStatus(JobState.RUNNING)
        return handle

    def poll(self, handle: JobHandle) -> JobStatus:
        return self.states[handle.job_id]

    def cancel(self, handle: JobHandle) -> None:
        self.cancelled.append(handle.job_id)
        if not self.states[handle.job_id].state.finished:
            self.states[handle.job_id] = JobStatus(JobState.CANCELLED, reason="cancelled")


class Setup:
    def __init__(self, tmp_path: Path, **config: Any):
        self.staging = tmp_path / "staging"
        self.mover = FilesystemMover(FilesystemMoverConfig(), self.staging)
        self.inner = FakeInner()
        self.clock = FakeClock()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.config = PersistentConfig(**{"heartbeat_interval": 1, "heartbeat_timeout": 10, **config})
        self.launcher = self.new_launcher()

    def new_launcher(self) -> PersistentLauncher:
        """Another server on the same staging area (a restart)."""
        return PersistentLauncher(
            self.inner, self.mover, self.config, "alpha", self.staging.parent / "logs", self.clock,
            model=ModelConfig(), device="cpu", events=self.record,
        )

    def record(self, event: str, round: int | None, facility: str | None, **fields: Any) -> None:
        assert round is None and facility == "alpha"
        self.events.append((event, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def spec(self, name: str) -> JobSpec:
        return JobSpec(name, ["python", "-m", "fedhpc", "worker", "--task", f"/tasks/{name}.json"],
                       self.staging.parent, task=f"/tasks/{name}.json")

    def inbox(self, worker: str = "w0001") -> Path:
        return self.staging / "workers" / worker

    def beat(self, worker: str = "w0001", **fields: Any) -> None:
        """The worker rewrites its heartbeat (a new `updated_at`, whatever the worker's clock says)."""
        payload = {"state": "idle", "seq": None, "base_load_seconds": 1.5, "updated_at": self.clock.t - 5000,
                   "beat": len(self.events) + self.clock.t, **fields}
        (self.inbox(worker) / "heartbeat.json").write_text(json.dumps(payload))

    def result(self, seq: str, worker: str = "w0001", **fields: Any) -> None:
        (self.inbox(worker) / "results").mkdir(exist_ok=True)
        (self.inbox(worker) / "results" / f"{seq}.json").write_text(json.dumps({"ok": True, **fields}))


@pytest.fixture(autouse=True)
def no_poll_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persistent_module, "CHECK_EVERY_S", 0.0)


def test_tasks_share_one_pilot_and_report_queued_running_done(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    first = s.launcher.submit(s.spec("alpha-r0001-a0"))
    second = s.launcher.submit(s.spec("alpha-r0002-a0"))

    (pilot,) = s.inner.handles
    assert pilot.spec.name == "alpha-w0001" and pilot.spec.task is None
    assert pilot.spec.argv[3:] == ["worker", "--persistent", "--inbox", str(s.inbox()), "--heartbeat-interval", "1",
                                   "--idle-timeout", "600", "--device", "cpu"]
    assert pilot.spec.log_dir == tmp_path / "logs"
    assert json.loads((s.inbox() / "worker.json").read_text())["model"] == ModelConfig().model_dump(mode="json")
    assigned = json.loads((s.inbox() / "assign" / "000002" / "assignment.json").read_text())
    assert assigned["task"] == "/tasks/alpha-r0002-a0.json" and assigned["name"] == "alpha-r0002-a0"
    assert (first.job_id, second.job_id) == ("fake-1:w0001/000001", "fake-1:w0001/000002")
    assert s.names() == ["worker_started"]

    assert s.launcher.poll(first).state is JobState.QUEUED
    s.beat(state="training", seq="000001")
    assert s.launcher.poll(first).state is JobState.RUNNING
    assert s.launcher.poll(second).state is JobState.QUEUED
    assert s.names() == ["worker_started", "worker_ready"] and s.events[1][1]["load_seconds"] == 1.5
    s.result("000001", load_seconds=0.01)
    s.result("000002", ok=False, error="global r0001: checksum mismatch")
    assert s.launcher.poll(first) == JobStatus(JobState.DONE, 0)
    failed = s.launcher.poll(second)
    assert failed.state is JobState.FAILED and "w0001/000002: global r0001: checksum mismatch" in failed.reason


def test_a_heartbeat_that_stops_changing_loses_the_pilot_and_its_task_moves_to_a_new_one(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    handle = s.launcher.submit(s.spec("alpha-r0001-a0"))
    s.clock.t += 7200  # hours in the queue without a heartbeat: only the job's own state counts
    assert s.launcher.poll(handle).state is JobState.QUEUED
    for _ in range(5):  # content changes keep it alive, however skewed the worker's own timestamps are
        s.beat(state="training", seq="000001")
        assert s.launcher.poll(handle).state is JobState.RUNNING  # the server sees the change now
        s.clock.t += 9
        assert s.launcher.poll(handle).state is JobState.RUNNING
    s.clock.t += 2  # 11 s since the server saw the content change
    assert s.launcher.poll(handle).state is JobState.QUEUED  # given to the replacement, not started there yet

    assert s.names() == ["worker_started", "worker_ready", "worker_lost", "worker_started"]
    lost = s.events[2][1]
    assert lost["worker"] == "w0001" and "heartbeat has not changed for 11.0 s" in lost["reason"]
    assert lost["seconds_since_heartbeat"] == pytest.approx(11.0)
    assert s.inner.cancelled == ["fake-1"]
    assert json.loads((s.inbox("w0002") / "assign" / "000001" / "assignment.json").read_text())["task"] == (
        "/tasks/alpha-r0001-a0.json"
    )
    s.result("000001", worker="w0002")
    assert s.launcher.poll(handle).state is JobState.DONE


def test_a_task_outliving_max_restarts_fails_with_the_pilots_reason(tmp_path: Path) -> None:
    s = Setup(tmp_path, max_restarts=1)
    handle = s.launcher.submit(s.spec("alpha-r0001-a0"))
    s.inner.states["fake-1"] = JobStatus(JobState.FAILED, 1, "rank 0 was killed by signal 9 (first failure)")
    assert s.launcher.poll(handle).state is JobState.QUEUED  # restart 1: on w0002
    s.inner.states["fake-2"] = JobStatus(JobState.FAILED, 1, "walltime exceeded (60 s)")
    status = s.launcher.poll(handle)
    assert status.state is JobState.FAILED
    assert "walltime exceeded (60 s)" in status.reason and "max_restarts is 1" in status.reason
    assert "w0001/000001, w0002/000001" in status.reason
    assert s.names() == ["worker_started", "worker_lost", "worker_started", "worker_lost"]
    s.launcher.submit(s.spec("alpha-r0002-a0"))  # the next task starts a new worker
    assert len(s.inner.handles) == 3


def test_a_result_written_before_the_worker_died_counts(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    handle = s.launcher.submit(s.spec("alpha-r0001-a0"))
    s.result("000001")
    s.inner.states["fake-1"] = JobStatus(JobState.FAILED, -9, "killed")
    assert s.launcher.poll(handle).state is JobState.DONE
    assert len(s.inner.handles) == 1  # nothing to hand on: no replacement until the next task


def test_a_worker_that_exits_on_its_own_is_stopped_not_lost(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    done = s.launcher.submit(s.spec("alpha-r0001-a0"))
    s.result("000001")
    assert s.launcher.poll(done).state is JobState.DONE
    s.inner.states["fake-1"] = JobStatus(JobState.DONE, 0)  # idle_timeout
    s.launcher.submit(s.spec("alpha-r0002-a0"))
    assert s.names() == ["worker_started", "worker_stopped", "worker_started"]
    assert "exited on its own" in s.events[1][1]["reason"]


def test_cancel_marks_a_task_not_yet_done_and_ignores_a_finished_one(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    waiting = s.launcher.submit(s.spec("alpha-r0001-a0"))
    finished = s.launcher.submit(s.spec("alpha-r0002-a0"))
    s.result("000002")
    s.launcher.cancel(waiting)
    s.launcher.cancel(finished)
    assert (s.inbox() / "cancel" / "000001" / "cancel.json").is_file()
    assert not (s.inbox() / "cancel" / "000002").exists()
    assert s.launcher.poll(waiting).state is JobState.CANCELLED
    s.launcher.cancel(waiting)  # idempotent


def test_worker_ids_are_never_reused_and_a_restarted_server_stops_the_orphans(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.launcher.submit(s.spec("alpha-r0001-a0"))
    restarted = s.new_launcher()  # the first server died without close()
    restarted.submit(s.spec("alpha-r0001-a1"))
    assert [h.spec.name for h in s.inner.handles] == ["alpha-w0001", "alpha-w0002"]
    assert (s.inbox("w0001") / "stop").exists() and not (s.inbox("w0002") / "stop").exists()
    again = s.new_launcher()
    again.submit(s.spec("alpha-r0001-a2"))
    assert s.inner.handles[-1].spec.name == "alpha-w0003" and (s.inbox("w0002") / "stop").exists()


def test_close_writes_stop_and_cancels_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persistent_module, "STOP_WAIT_S", 0.3)
    s = Setup(tmp_path)
    handle = s.launcher.submit(s.spec("alpha-r0001-a0"))
    s.launcher.close()
    assert (s.inbox() / "stop").exists()
    assert s.inner.cancelled == ["fake-1"]
    assert s.names() == ["worker_started", "worker_stopped"]
    assert "cancelled after" in s.events[1][1]["reason"]
    assert s.launcher.poll(handle).state is JobState.CANCELLED
    s.launcher.close()  # nothing left: a no-op


def test_a_job_without_a_task_path_is_refused(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    with pytest.raises(SubmitError, match="no task path"):
        s.launcher.submit(JobSpec("eval", ["python", "-c", "pass"], tmp_path))
    assert s.inner.handles == []
