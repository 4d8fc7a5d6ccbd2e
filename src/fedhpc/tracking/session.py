"""The trackers of one server: fed from the ledger, resumed by the ledger, never fatal to the run.

Each backend reads the ledger's events after its own cursor (ledger meta
``tracking.<backend>.cursor``), not only the events the event log tells
subscribers about, for two reasons: `aggregated` is committed with its round
straight into the ledger, and a server killed after recording events but before
tracking them leaves them to the next server, which logs them on start. The
cursor is written after the events each subscriber call finds (normally the one
just recorded) are logged, so a round is logged once; a server killed between
logging them and writing the cursor logs those again on resume. The tracked run's id (``tracking.<backend>.run_id``)
reopens the same run.

A backend that raises (an MLflow server that is down, a full disk) is dropped
for the rest of this server's run: one warning, a `tracking_failed` event in
the ledger, and the round goes on. Its cursor stays where it failed, so the
next server (a resume) logs what it missed.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fedhpc.config.tracking import TrackingConfig
from fedhpc.report.html import write_report
from fedhpc.tracking.base import Outcome, Tracker
from fedhpc.tracking.metrics import event_metrics, flat_params

log = logging.getLogger(__name__)

#: the events that end a server's run, and what the trackers are told
_OUTCOMES: dict[str, Outcome] = {"run_finished": "finished", "run_stopped": "stopped",
                                 "run_interrupted": "interrupted"}


class LedgerEvent(Protocol):
    id: int
    ts: float
    round: int | None
    facility: str | None
    event: str
    detail: dict[str, Any]


class EventLedger(Protocol):
    """What the session reads and writes of the run's ledger (`run/ledger.py`'s `Ledger`)."""

    def events_after(self, event_id: int) -> Sequence[LedgerEvent]: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...


class Events(Protocol):
    """The server's event log (`run/events.py`): its ledger, its subscribers, and recording an event."""

    ledger: EventLedger

    def subscribe(self, subscriber: Callable[[str, int | None, str | None, dict[str, Any]], None]) -> None: ...
    def record(self, event: str, round: int | None = None, facility: str | None = None, **fields: Any) -> None: ...


class TrackingSession:
    def __init__(self, trackers: list[Tracker], events: Events, run_dir: Path):
        self.events = events
        self.run_dir = run_dir
        self._live = list(trackers)
        self._draining = False
        self._outcome: Outcome = "incomplete"

    def start(self, params: dict[str, str]) -> None:
        """Open (or reopen) each tracked run, then log what the ledger holds that it lacks."""
        ledger = self.events.ledger
        for tracker in list(self._live):
            recorded = ledger.get_meta(_key(tracker, "run_id"))
            try:
                run_id = tracker.start(recorded)
                ledger.set_meta(_key(tracker, "run_id"), run_id)
                if recorded is None:
                    tracker.log_params(params)
            except Exception as e:  # noqa: BLE001 - any failure of a tracker must leave the run going
                self._fail(tracker, "start", e)
        self._drain()

    def on_event(self, event: str, round: int | None, facility: str | None, fields: dict[str, Any]) -> None:
        """An event log subscriber: whatever was recorded, log every ledger event each tracker lacks."""
        self._drain()

    def close(self) -> None:
        """Log what is left, the report as an artifact, and end each tracked run with the run's outcome."""
        self._drain()
        if not self._live:
            return
        with tempfile.TemporaryDirectory(prefix="fedhpc-report-") as tmp:
            report = self._report(Path(tmp) / "report.html")
            for tracker in list(self._live):
                try:
                    if report is not None:
                        tracker.log_artifact(report)
                    tracker.close(self._outcome)
                except Exception as e:  # noqa: BLE001 - the run is over; one tracker must not stop the others
                    self._fail(tracker, "close", e)

    def _report(self, out: Path) -> Path | None:
        """The report as it stands now: the CLI writes report.html only after the server returns."""
        try:
            return write_report(self.run_dir, out)
        except Exception:  # noqa: BLE001 - a report that cannot be drawn still lets the trackers close
            log.warning("could not write the report for the trackers", exc_info=True)
            return None

    def _drain(self) -> None:
        if self._draining or not self._live:
            return
        self._draining = True
        try:
            ledger = self.events.ledger
            cursors = {tracker.name: int(ledger.get_meta(_key(tracker, "cursor")) or 0) for tracker in self._live}
            pending = ledger.events_after(min(cursors.values()))
            for event in pending:
                if event.event in _OUTCOMES:
                    self._outcome = _OUTCOMES[event.event]
                elif event.event == "run_started":
                    self._outcome = "incomplete"
            for tracker in list(self._live):
                self._log(tracker, [e for e in pending if e.id > cursors[tracker.name]])
        finally:
            self._draining = False

    def _log(self, tracker: Tracker, pending: list[LedgerEvent]) -> None:
        logged = None
        try:
            for event in pending:
                metrics = event_metrics(event.event, event.facility, event.detail)
                if metrics and event.round is not None:
                    tracker.log_metrics(metrics, event.round, event.ts)
                logged = event.id
        except Exception as e:  # noqa: BLE001 - a tracking server being down must never cost a round
            self._fail(tracker, "log", e)
        if logged is not None:  # up to the last event logged, failure or not: a resume starts after it
            self.events.ledger.set_meta(_key(tracker, "cursor"), str(logged))

    def _fail(self, tracker: Tracker, doing: str, error: Exception) -> None:
        """Drop `tracker` for the rest of this server's run, and say so once: in the log and in the ledger."""
        self._live.remove(tracker)
        reason = f"{type(error).__name__}: {error}"
        log.warning("tracking to %s failed (%s: %s); the run goes on without it, and a resumed run logs what it "
                    "missed", tracker.name, doing, reason.splitlines()[0][:500])
        self.events.record("tracking_failed", backend=tracker.name, during=doing, reason=reason[-2000:])


def _key(tracker: Tracker, what: str) -> str:
    return f"tracking.{tracker.name}.{what}"


def start_tracking(config: TrackingConfig, events: Events, document: dict[str, Any], run_dir: Path,
                   name: str) -> TrackingSession | None:
    """The configured trackers, started and subscribed to `events`; None when `tracking:` names none."""
    trackers = _trackers(config, run_dir, name)
    if not trackers:
        return None
    session = TrackingSession(trackers, events, run_dir)
    session.start(flat_params(document))
    events.subscribe(session.on_event)
    return session


def _trackers(config: TrackingConfig, run_dir: Path, name: str) -> list[Tracker]:
    """One per configured backend; each module imports its package only when its `start` runs."""
    trackers: list[Tracker] = []
    if config.mlflow is not None:
        from fedhpc.tracking.mlflow_backend import MlflowTracker
        trackers.append(MlflowTracker(config.mlflow, name))
    if config.tensorboard is not None:
        from fedhpc.tracking.tensorboard_backend import TensorboardTracker
        trackers.append(TensorboardTracker(config.tensorboard, run_dir))
    if config.wandb is not None:
        from fedhpc.tracking.wandb_backend import WandbTracker
        trackers.append(WandbTracker(config.wandb, run_dir, name))
    return trackers
