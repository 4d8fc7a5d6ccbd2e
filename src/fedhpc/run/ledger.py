"""The run's ledger: every event, and which rounds are complete, in SQLite.

A round is complete when its global directory has been renamed into place and
its row in `rounds` is committed. Both the `aggregated` event and the `rounds`
row are written in one transaction, and `rounds.round` is the primary key, so
a round can never be recorded as aggregated twice, even across crashes.
Whatever else must change with the round (an asynchronous scheduler's state)
is written to `meta` in that same transaction.

Timestamps come from the run's clock: wall time, or a simulation's virtual time.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    round INTEGER,
    facility TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_round ON events (round, event);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    completed_at REAL NOT NULL,
    global_dir TEXT NOT NULL,
    num_updates INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    round: int | None
    facility: str | None
    event: str
    detail: dict[str, Any]


class Ledger:
    def __init__(self, path: Path, now: Callable[[], float] = time.time):
        self.path = Path(path)
        self._now = now
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def record(self, event: str, round: int | None = None, facility: str | None = None, **detail: Any) -> int:
        """Append an event; return its id (metrics.jsonl carries it, so a resume can tell what it lacks)."""
        cursor = self._db.execute(
            "INSERT INTO events (ts, round, facility, event, detail) VALUES (?, ?, ?, ?, ?)",
            (self._now(), round, facility, event, json.dumps(detail)),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def complete_round(
        self, round: int, global_dir: str, num_updates: int, meta: dict[str, str] | None = None, **detail: Any
    ) -> int:
        """Mark `round` complete, with `meta` entries set atomically; raises `sqlite3.IntegrityError` if it already is.

        Returns the id of its `aggregated` event.
        """
        with self._transaction():
            self._db.execute(
                "INSERT INTO rounds (round, completed_at, global_dir, num_updates, detail) VALUES (?, ?, ?, ?, ?)",
                (round, self._now(), global_dir, num_updates, json.dumps(detail)),
            )
            event_id = self.record("aggregated", round=round, num_updates=num_updates, **detail)
            for key, value in (meta or {}).items():
                self.set_meta(key, value)
        return event_id

    def round_detail(self, round: int) -> dict[str, Any] | None:
        """The detail committed with `round` (its facilities, attempts, ...), or None if it is not complete."""
        row = self._db.execute("SELECT detail FROM rounds WHERE round = ?", (round,)).fetchone()
        return json.loads(row[0]) if row else None

    def attempt_ids(self, facility: str) -> set[str]:
        """Every attempt id ever recorded for `facility`: a new attempt must not take one of them."""
        rows = self._db.execute(
            "SELECT DISTINCT json_extract(detail, '$.attempt') FROM events WHERE facility = ?", (facility,)
        )
        return {value for (value,) in rows if isinstance(value, str)}

    def events_after(self, event_id: int) -> list[Event]:
        """Events newer than `event_id`, oldest first."""
        rows = self._db.execute(
            "SELECT id, ts, round, facility, event, detail FROM events WHERE id > ? ORDER BY id", (event_id,)
        ).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def last_complete_round(self) -> int | None:
        row = self._db.execute("SELECT MAX(round) FROM rounds").fetchone()
        return row[0]

    def completed_at(self, round: int) -> float | None:
        row = self._db.execute("SELECT completed_at FROM rounds WHERE round = ?", (round,)).fetchone()
        return row[0] if row else None

    def completed_rounds(self) -> list[int]:
        return [r for (r,) in self._db.execute("SELECT round FROM rounds ORDER BY round")]

    def events(self, event: str | None = None, round: int | None = None) -> list[Event]:
        query, args = "SELECT id, ts, round, facility, event, detail FROM events WHERE 1=1", []
        if event is not None:
            query += " AND event = ?"
            args.append(event)
        if round is not None:
            query += " AND round = ?"
            args.append(round)
        rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
