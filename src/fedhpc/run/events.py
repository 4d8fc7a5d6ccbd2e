"""Where the server records what happened: the ledger and `metrics.jsonl`, with one call.

The ledger is the durable record a resume reads; `metrics.jsonl` is the stream
the live view, `fedhpc status` and the report read. Both get the same event,
stamped with the run's clock (wall time, or a simulation's virtual time).
"""

from __future__ import annotations

from typing import Any

from fedhpc.report.metrics_log import MetricsLog
from fedhpc.run.clock import Clock
from fedhpc.run.ledger import Ledger


class EventLog:
    def __init__(self, ledger: Ledger, metrics: MetricsLog, clock: Clock):
        self.ledger = ledger
        self.metrics = metrics
        self.clock = clock

    def record(self, event: str, round: int | None = None, facility: str | None = None, **fields: Any) -> None:
        """An event for both the ledger and metrics.jsonl."""
        self.ledger.record(event, round, facility, **fields)
        self.emit(event, round=round, facility=facility, **fields)

    def emit(self, event: str, **fields: Any) -> None:
        """An event for metrics.jsonl only (the ledger has it already, e.g. `aggregated`)."""
        self.metrics.emit(event, ts=self.clock.now(), **{k: v for k, v in fields.items() if v is not None})
