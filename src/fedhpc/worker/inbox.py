"""A persistent worker's inbox and heartbeat, as rank 0 reads and writes them (docs/contracts.md).

The server writes ``worker.json``, ``assign/<seq>/assignment.json``,
``cancel/<seq>/`` and ``stop``, each published whole through its mover; the
worker writes ``results/<seq>.json`` and ``heartbeat.json``, each atomically
(temporary file, then rename), so neither side ever reads half a file.
Names, formats and payloads are the server's own, from `fedhpc.exchange.inbox`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedhpc.atomic_files import atomic_write_json
from fedhpc.config import ModelConfig
from fedhpc.exchange import inbox as protocol

logger = logging.getLogger(__name__)


class Inbox:
    """The inbox as rank 0 reads and writes it (docs/contracts.md)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.assign_dir = self.root / protocol.ASSIGN
        self.results_dir = self.root / protocol.RESULTS
        self.cancel_dir = self.root / protocol.CANCEL
        self.heartbeat_path = self.root / protocol.HEARTBEAT_FILE

    def create(self) -> None:
        for directory in (self.assign_dir, self.results_dir, self.cancel_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def stopped(self) -> bool:
        """A `stop` file, or a `stop/` directory as a mover publishes one."""
        return (self.root / protocol.STOP).exists()

    def model_config(self) -> ModelConfig | None:
        """The model section the server announced in worker.json; None when absent or unreadable."""
        try:
            raw = json.loads((self.root / protocol.WORKER_FILE).read_text())
            return ModelConfig.model_validate(raw["model"]) if raw.get("model") is not None else None
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as e:
            logger.warning("no model section in %s (%s); the base model loads with the first task",
                           self.root / protocol.WORKER_FILE, e)
            return None

    def pending(self) -> list[str]:
        """Assignments without a result, in sequence order (hidden partial copies are not yet assignments)."""
        try:
            names = [entry.name for entry in os.scandir(self.assign_dir) if protocol.is_seq(entry.name)]
        except OSError:
            return []
        return [seq for seq in sorted(names, key=int) if not self.result_path(seq).exists()]

    def assignment(self, seq: str) -> dict[str, Any]:
        return json.loads((self.root / protocol.assignment_entry(seq) / protocol.ASSIGNMENT_FILE).read_text())

    def cancelled(self, seq: str) -> bool:
        return (self.root / protocol.cancel_entry(seq)).exists()

    def result_path(self, seq: str) -> Path:
        return self.root / protocol.result_file(seq)

    def write_result(self, seq: str, payload: dict[str, Any]) -> None:
        atomic_write_json(self.result_path(seq), protocol.result(seq, time.time(), payload))


class Heartbeat:
    """Rank 0's heartbeat.json, rewritten every `interval` seconds and at once on every change of state."""

    def __init__(self, path: Path, interval: float, **fields: Any):
        self.path = path
        self.interval = interval
        self.fields: dict[str, Any] = {"state": "loading", "seq": None, "started_at": time.time(), **fields}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._write()
        self._thread.start()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.fields.update(fields)
        self._wake.set()

    def stop(self, state: str) -> None:
        self._stopped = True
        self.update(state=state)
        self._thread.join(timeout=5)
        self._write()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._write()

    def _write(self) -> None:
        with self._lock:
            payload = {**self.fields, "updated_at": time.time()}
        try:
            atomic_write_json(self.path, payload)
        except OSError as e:  # a full or vanished disk: the server will see the heartbeat stop
            logger.warning("cannot write %s: %s", self.path, e)
