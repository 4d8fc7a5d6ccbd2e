"""`metrics.jsonl`: the run's event log, one JSON object per line (schema: docs/contracts.md).

The server appends; the HTML report and `fedhpc status` read. A line is written
with a single `write` and flushed, so a reader sees whole lines except, after a
killed server, possibly a torn last one: `read_events` drops it. Reopening the
log on resume appends, first ending a torn line so the next event starts on a
line of its own.

Lines are strict JSON: a non-finite float (a NaN loss) is written as ``null``,
so the file stays readable by `jq` and by any JSON parser, not only Python's.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    """`value` as plain JSON types: NaN / ±inf at any depth become None, numpy scalars Python numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class MetricsLog:
    """Appends events to `path`; safe to share between the orchestrator's threads.

    ``ts`` is the time of `emit` unless the caller passes one (a replayed event).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")
        if self._ends_torn():
            logger.warning("%s ended in a partial line (a killed run?); starting a new line", self.path)
            self._file.write("\n")
            self._file.flush()

    def _ends_torn(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event and return the record as written."""
        record = _finite({"ts": time.time(), "event": event, **fields})
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=str) + "\n"
        with self._lock:
            if self._file.closed:
                raise ValueError(f"emit({event!r}) on a closed metrics log {self.path}")
            self._file.write(line)
            self._file.flush()
        return record

    def last_ledger_id(self) -> int | None:
        """The highest `ledger_id` a line carries: the ledger's events after it never reached this file.

        None when no line carries one (a new log, or one written before lines carried ledger ids).
        """
        ids = [e["ledger_id"] for e in read_events(self.path) if isinstance(e.get("ledger_id"), int)]
        return max(ids) if ids else None

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every event in `path`, in file order.

    A torn last line (the server was killed mid-write) is dropped silently. An
    unreadable line elsewhere (a torn line from an earlier crash, before the run
    resumed) is skipped with a warning. Raises `FileNotFoundError` if there is
    no log at all; an empty file gives an empty list.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    events: list[dict[str, Any]] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "event" not in record:
            if number != last:
                logger.warning("%s:%d is not a JSON event; skipped", path, number + 1)
            continue
        events.append(record)
    return events
