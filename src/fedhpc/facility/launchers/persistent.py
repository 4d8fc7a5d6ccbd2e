"""Persistent workers (`mode: persistent`): one facility job trains task after task.

`PersistentLauncher` wraps the facility's own launcher (`inner`) and speaks the
same `Launcher` protocol, so the round loops and `run/launches.py` do not know the
difference: `submit` hands a task to the facility's live worker, `poll` reports
the task's state, `cancel` withdraws it. Behind that, the launcher keeps one
*pilot* job alive through `inner`: ``fedhpc worker --persistent --inbox
workers/wNNNN`` (`fedhpc.worker.persistent`), and talks to it only through the
files of its inbox in the staging area (docs/contracts.md, "Persistent worker
inbox"; names and payloads in `fedhpc.exchange.inbox`), moved by the facility's
`Mover`: assignments and cancel markers and ``stop`` in, results and
``heartbeat.json`` out.

A pilot is lost when `inner` says its job ended (walltime, killed, crashed, or
exited on its own) or when its heartbeat has not changed for
`heartbeat_timeout` seconds. The heartbeat is judged by *when the server saw its
content change*, on the server's clock, never by the worker's timestamps, so a
clock skew between sites cannot fake or hide a dead worker; and before the
first heartbeat only `inner` is trusted, since a batch job may sit in the queue
for hours. A lost pilot is cancelled, and every task it had not finished is
handed to a new pilot (each task survives at most `max_restarts` replacements;
then it is reported FAILED with the pilot's reason). Meanwhile those tasks
report QUEUED, so the server simply keeps waiting for them.

Worker ids (``w0001``, ``w0002``, ...) are never reused, even across server
restarts: the first pilot of a server takes the first id whose inbox does not
exist, and writes ``stop`` into the older inboxes it passes, so an orphan of a
killed server exits instead of sharing an inbox with the new one.

Cancelling a task that has not started writes a marker the worker honours (it
skips the task). A task already running runs to its end and its result is
ignored: stopping one task would mean stopping the allocation.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhpc.atomic_files import atomic_write_json
from fedhpc.clock import Clock
from fedhpc.config import ModelConfig, PersistentConfig
from fedhpc.errors import FedhpcError, SubmitError
from fedhpc.exchange import inbox as protocol
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus, Launcher, Mover

logger = logging.getLogger(__name__)

EventSink = Callable[..., None]
"""Records an event: ``sink(event, round, facility, **fields)`` (the orchestrator's `EventLog.record`)."""
CHECK_EVERY_S = 0.25
"""The pilot's job state and heartbeat are read at most this often, however many tasks are polled."""
STOP_WAIT_S = 5.0
"""`close` waits this long for the pilot to honour `stop` before cancelling its job."""


@dataclass
class Pilot:
    """One persistent worker job."""

    worker_id: str
    handle: JobHandle
    submitted_at: float  # server clock
    last_seq: int = 0
    heartbeat: bytes | None = None  # the content last seen
    changed_at: float | None = None  # server clock when that content was first seen; None: no heartbeat yet
    current_seq: int = 0  # the task the heartbeat says the worker is on (or last finished)
    ready: bool = False

    @property
    def inbox(self) -> str:
        return protocol.inbox_path(self.worker_id)


@dataclass
class Assignment:
    """What a task's `JobHandle.native` holds."""

    spec: JobSpec
    pilot: Pilot | None = None
    seq: str = ""
    restarts: int = 0
    started: bool = False
    final: JobStatus | None = None
    history: list[str] = field(default_factory=list)  # "w0001/000003", one per pilot it was given to


class PersistentLauncher(Launcher):
    """`Launcher` that runs each task on the facility's persistent worker; see the module docstring."""

    def __init__(
        self,
        inner: Launcher,
        mover: Mover,
        config: PersistentConfig,
        facility: str,
        log_dir: Path,
        clock: Clock,
        *,
        model: ModelConfig | None = None,
        device: str = "auto",
        events: EventSink | None = None,
        python: str = sys.executable,
    ):
        """`model`: announced in the inbox so the worker loads the base before its first task
        (without it the base loads with the first task); `clock`: the server's (`now()`)."""
        self.inner = inner
        self.mover = mover
        self.config = config
        self.facility = facility
        self.log_dir = Path(log_dir)
        self.clock = clock
        self.model = model
        self.device = device
        self.events = events
        self.python = python
        self.pilot: Pilot | None = None
        self._open: list[Assignment] = []  # tasks neither finished nor cancelled
        self._next_number: int | None = None  # None: not yet probed
        self._checked_at = float("-inf")

    # --- Launcher protocol -----------------------------------------------------------------------

    def submit(self, job: JobSpec) -> JobHandle:
        if job.task is None:
            raise SubmitError(f"job {job.name!r} has no task path; a persistent worker runs tasks, not commands")
        self._check_pilot(force=True)
        pilot = self.pilot or self._start_pilot()
        assignment = Assignment(job)
        self._assign(assignment, pilot)
        self._open.append(assignment)
        return JobHandle(
            job_id=f"{pilot.handle.job_id}:{pilot.worker_id}/{assignment.seq}",
            spec=job,
            submitted_at=self.clock.now(),
            native=assignment,
        )

    def poll(self, handle: JobHandle) -> JobStatus:
        """DONE or FAILED once the worker's result is there; QUEUED until the worker takes the task, then RUNNING."""
        assignment = _assignment(handle)
        if assignment.final is None:
            self._check_pilot()
        if assignment.final is not None:
            return assignment.final
        result = self._result(assignment)
        if result is not None:
            return self._finish(assignment, result)
        pilot = assignment.pilot
        if not assignment.started and pilot is not None and pilot.current_seq >= int(assignment.seq):
            assignment.started = True
        return JobStatus(JobState.RUNNING if assignment.started else JobState.QUEUED)

    def cancel(self, handle: JobHandle) -> None:
        """Withdraw a task: the worker skips it if it has not started; if it has, its result is ignored."""
        assignment = _assignment(handle)
        if assignment.final is not None:
            return
        assignment.final = JobStatus(JobState.CANCELLED, reason="cancelled")
        self._open.remove(assignment)
        pilot = assignment.pilot
        if pilot is None or pilot is not self.pilot or self._result(assignment) is not None:
            return
        try:
            self._push_json(f"{pilot.inbox}/{protocol.cancel_entry(assignment.seq)}", protocol.CANCEL_FILE,
                            {"cancelled_at": time.time()})
        except FedhpcError as e:
            logger.warning("%s: could not write the cancel marker of task %s: %s", self.facility, assignment.seq, e)

    def close(self) -> None:
        """The run is over: ask the worker to stop, give it `STOP_WAIT_S` seconds, then cancel its job.

        Then the inner launcher's own `close`.
        """
        pilot, self.pilot = self.pilot, None
        for assignment in self._open:
            assignment.final = JobStatus(JobState.CANCELLED, reason="the run ended")
        self._open = []
        if pilot is not None:
            self._stop_pilot(pilot)
        self.inner.close()

    def _stop_pilot(self, pilot: Pilot) -> None:
        self._write_stop(pilot.inbox)
        deadline = time.monotonic() + STOP_WAIT_S
        status = self.inner.poll(pilot.handle)
        while not status.state.finished and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self.inner.poll(pilot.handle)
        self.inner.cancel(pilot.handle)
        how = "it stopped" if status.state.finished else f"cancelled after {STOP_WAIT_S:g} s"
        self._record("worker_stopped", pilot, reason=f"the run ended ({how})")

    # --- the pilot -------------------------------------------------------------------------------

    def _start_pilot(self) -> Pilot:
        worker_id = self._claim_worker_id()
        inbox = protocol.inbox_path(worker_id)
        model = self.model.model_dump(mode="json") if self.model is not None else None
        self._push_json(inbox, protocol.WORKER_FILE, protocol.worker_note(worker_id, self.facility, model, time.time()))
        argv = [
            self.python, "-m", "fedhpc", "worker", "--persistent",
            "--inbox", self.mover.facility_path(inbox),
            "--heartbeat-interval", f"{self.config.heartbeat_interval:g}",
            "--idle-timeout", f"{self.config.idle_timeout:g}",
            "--device", self.device,
        ]  # fmt: skip
        spec = JobSpec(name=f"{self.facility}-{worker_id}", argv=argv, log_dir=self.log_dir)
        handle = self.inner.submit(spec)
        self.pilot = Pilot(worker_id, handle, self.clock.now())
        logger.info("%s: started persistent worker %s as %s", self.facility, worker_id, handle.job_id)
        self._record("worker_started", self.pilot, inbox=self.mover.facility_path(inbox))
        return self.pilot

    def _claim_worker_id(self) -> str:
        """The next id whose inbox does not exist; older inboxes (a killed server's orphans) get a stop file."""
        if self._next_number is None:
            number = 1
            while self.mover.exists(protocol.inbox_path(protocol.worker_id(number))):
                self._write_stop(protocol.inbox_path(protocol.worker_id(number)))
                number += 1
            self._next_number = number
        worker_id = protocol.worker_id(self._next_number)
        self._next_number += 1
        return worker_id

    def _check_pilot(self, force: bool = False) -> None:
        """Read the pilot's job state and heartbeat; replace it when it is lost."""
        pilot = self.pilot
        if pilot is None or (not force and time.monotonic() - self._checked_at < CHECK_EVERY_S):
            return
        self._checked_at = time.monotonic()
        status = self.inner.poll(pilot.handle)  # first: a worker that exited has written all it will write
        beat = self.mover.peek(f"{pilot.inbox}/{protocol.HEARTBEAT_FILE}")
        now = self.clock.now()
        if beat is not None and beat != pilot.heartbeat:
            pilot.heartbeat, pilot.changed_at = beat, now
            self._read_heartbeat(pilot, beat)
        if status.state.finished:
            if status.state is JobState.DONE:
                reason = "the worker exited on its own (stop file or idle_timeout)"
            else:
                reason = f"the worker's job ended ({status.state.value}): {status.reason or 'no reason given'}"
            self._replace(pilot, reason, clean=status.state is JobState.DONE)
        elif pilot.changed_at is not None and now - pilot.changed_at > self.config.heartbeat_timeout:
            self._replace(pilot, f"its heartbeat has not changed for {now - pilot.changed_at:.1f} s "
                                 f"(heartbeat_timeout {self.config.heartbeat_timeout:g} s)", clean=False)

    def _read_heartbeat(self, pilot: Pilot, beat: bytes) -> None:
        try:
            state = json.loads(beat)
            seq = int(state["seq"]) if state.get("seq") is not None else 0
        except (ValueError, KeyError, TypeError):
            return  # a heartbeat is a heartbeat even if unreadable: it changed
        pilot.current_seq = max(pilot.current_seq, seq)
        if not pilot.ready and state.get("base_load_seconds") is not None:
            pilot.ready = True
            self._record("worker_ready", pilot, load_seconds=state["base_load_seconds"], host=state.get("host"),
                         pid=state.get("pid"), world_size=state.get("world_size"),
                         seconds=self.clock.now() - pilot.submitted_at)

    def _replace(self, pilot: Pilot, reason: str, clean: bool) -> None:
        """`pilot` is gone: cancel its job, and hand its unfinished tasks to a new pilot."""
        self.pilot = None
        since = self.clock.now() - pilot.changed_at if pilot.changed_at is not None else None
        if clean:
            self._record("worker_stopped", pilot, reason=reason)
        else:
            logger.warning("%s: persistent worker %s (%s) is lost: %s", self.facility, pilot.worker_id,
                           pilot.handle.job_id, reason)
            self._record("worker_lost", pilot, reason=reason, seconds_since_heartbeat=since)
        self.inner.cancel(pilot.handle)  # a job that ended keeps its outcome; a hung one is stopped
        orphans = []
        for assignment in [a for a in self._open if a.pilot is pilot]:
            result = self._result(assignment)
            if result is not None:  # finished before the worker went
                self._finish(assignment, result)
                continue
            assignment.restarts += 1
            if assignment.restarts > self.config.max_restarts:
                self._fail(assignment, f"{reason}; the task was given to {assignment.restarts} workers "
                                       f"({', '.join(assignment.history)}), persistent.max_restarts is "
                                       f"{self.config.max_restarts}")
                continue
            orphans.append(assignment)
        if not orphans:
            return  # the next submit starts a worker
        try:
            replacement = self._start_pilot()
            for assignment in orphans:
                self._assign(assignment, replacement)
        except FedhpcError as e:
            for assignment in orphans:
                if assignment.final is None:
                    self._fail(assignment, f"{reason}; no replacement worker could be started: {e}")

    # --- tasks -----------------------------------------------------------------------------------

    def _assign(self, assignment: Assignment, pilot: Pilot) -> None:
        pilot.last_seq += 1
        assignment.pilot, assignment.seq, assignment.started = pilot, protocol.seq_name(pilot.last_seq), False
        assignment.history.append(f"{pilot.worker_id}/{assignment.seq}")
        payload = protocol.assignment(assignment.seq, assignment.spec.task, assignment.spec.name, time.time())
        self._push_json(f"{pilot.inbox}/{protocol.assignment_entry(assignment.seq)}", protocol.ASSIGNMENT_FILE, payload)

    def _result(self, assignment: Assignment) -> dict[str, Any] | None:
        if assignment.pilot is None:
            return None
        raw = self.mover.peek(f"{assignment.pilot.inbox}/{protocol.result_file(assignment.seq)}")
        return None if raw is None else protocol.read_result(raw)

    def _finish(self, assignment: Assignment, result: dict[str, Any]) -> JobStatus:
        if result.get("ok") is True:
            assignment.final = JobStatus(JobState.DONE, 0)
        else:
            where = assignment.history[-1] if assignment.history else "?"
            error = result.get("error") or "no reason given"
            assignment.final = JobStatus(JobState.FAILED, None, f"persistent worker {where}: {error}")
        if assignment in self._open:
            self._open.remove(assignment)
        return assignment.final

    def _fail(self, assignment: Assignment, reason: str) -> None:
        assignment.final = JobStatus(JobState.FAILED, None, reason)
        if assignment in self._open:
            self._open.remove(assignment)

    # --- files -----------------------------------------------------------------------------------

    def _push_json(self, relative: str, name: str, payload: dict[str, Any]) -> None:
        """Publish a directory holding one JSON file at `relative` in the staging area."""
        with tempfile.TemporaryDirectory(prefix="fedhpc-inbox-") as local:
            atomic_write_json(Path(local) / name, payload)
            self.mover.push(Path(local), relative)

    def _write_stop(self, inbox: str) -> None:
        if self.mover.exists(f"{inbox}/{protocol.STOP}"):
            return
        try:
            self._push_json(f"{inbox}/{protocol.STOP}", protocol.STOP_FILE, {"stopped_at": time.time()})
        except FedhpcError as e:
            logger.warning("%s: could not write %s/%s: %s", self.facility, inbox, protocol.STOP, e)

    def _record(self, event: str, pilot: Pilot, **fields: Any) -> None:
        if self.events is not None:
            self.events(event, None, self.facility, job_id=pilot.handle.job_id, worker=pilot.worker_id, **fields)


def _assignment(handle: JobHandle) -> Assignment:
    if not isinstance(handle.native, Assignment):
        raise SubmitError(f"{handle.job_id} was not submitted through this persistent launcher")
    return handle.native
