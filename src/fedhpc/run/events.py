"""Where the server records what happened: the ledger and `metrics.jsonl`, with one call.

The ledger is the durable record a resume reads; `metrics.jsonl` is the stream
the live view, `fedhpc status` and the report read. Both get the same event,
stamped with the run's clock (wall time, or a simulation's virtual time).

A server killed between the two writes leaves the ledger ahead of the file;
each line carries its ledger event's id (`ledger_id`), so a resumed server
appends what the file lacks (`catch_up`) before it records anything new.

Whoever shows the run as it goes (the progress view) subscribes to the events
recorded from then on (`subscribe`), instead of being called beside each one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fedhpc.report.metrics_log import MetricsLog
from fedhpc.clock import Clock
from fedhpc.run.ledger import Ledger

log = logging.getLogger(__name__)

Subscriber = Callable[[str, int | None, str | None, dict[str, Any]], None]
"""Called as ``subscriber(event, round, facility, fields)`` after each recorded event is written."""


class EventLog:
    def __init__(self, ledger: Ledger, metrics: MetricsLog, clock: Clock):
        self.ledger = ledger
        self.metrics = metrics
        self.clock = clock
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Tell `subscriber` each event recorded from now on; events only emitted or caught up are not told."""
        self._subscribers.append(subscriber)

    def record(self, event: str, round: int | None = None, facility: str | None = None, **fields: Any) -> None:
        """An event for both the ledger and metrics.jsonl."""
        ledger_id = self.ledger.record(event, round, facility, **fields)
        self.emit(event, round=round, facility=facility, ledger_id=ledger_id, **fields)
        for subscriber in self._subscribers:
            subscriber(event, round, facility, fields)

    def emit(self, event: str, **fields: Any) -> None:
        """An event for metrics.jsonl only (the ledger has it already, e.g. `aggregated`: pass its `ledger_id`)."""
        self.metrics.emit(event, ts=self.clock.now(), **{k: v for k, v in fields.items() if v is not None})

    def catch_up(self) -> int:
        """Append to metrics.jsonl the ledger events it lacks (a server killed between the two); return how many.

        A file whose lines carry no ledger id (new, or written by an older fedhpc) is left as it is:
        nothing tells which of its lines the ledger's events are.
        """
        last = self.metrics.last_ledger_id()
        if last is None:
            return 0
        missing = self.ledger.events_after(last)
        for e in missing:
            fields = {**e.detail, "ts": e.ts, "round": e.round, "facility": e.facility, "ledger_id": e.id}
            self.metrics.emit(e.event, **{k: v for k, v in fields.items() if v is not None and k != "event"})
        if missing:
            log.info("metrics.jsonl lacked %d ledger event(s) of the killed server; appended", len(missing))
        return len(missing)
