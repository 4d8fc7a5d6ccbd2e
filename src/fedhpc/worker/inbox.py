"""A persistent worker's inbox and heartbeat, as rank 0 reads and writes them (docs/contracts.md).

The server writes ``worker.json``, ``assign/<seq>/assignment.json``,
``cancel/<seq>/`` and ``stop``, each published whole through its mover; the
worker writes ``results/<seq>.json`` and ``heartbeat.json``, each atomically
(temporary file, then rename), so neither side ever reads half a file.
Everything is JSON.
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

from fedhpc.config import ModelConfig

logger = logging.getLogger(__name__)

WORKER_FILE = "worker.json"
"""The server's note in a new inbox: {"worker", "facility", "model"}; `model` lets the base load early."""


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Rewrite a small JSON file so a reader sees the old or the new content, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


class Inbox:
    """The inbox as rank 0 reads and writes it (docs/contracts.md)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.assign_dir = self.root / "assign"
        self.results_dir = self.root / "results"
        self.cancel_dir = self.root / "cancel"
        self.heartbeat_path = self.root / "heartbeat.json"

    def create(self) -> None:
        for directory in (self.assign_dir, self.results_dir, self.cancel_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def stopped(self) -> bool:
        """A `stop` file, or a `stop/` directory as a mover publishes one."""
        return (self.root / "stop").exists()

    def model_config(self) -> ModelConfig | None:
        """The model section the server announced in worker.json; None when absent or unreadable."""
        try:
            raw = json.loads((self.root / WORKER_FILE).read_text())
            return ModelConfig.model_validate(raw["model"]) if raw.get("model") is not None else None
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as e:
            logger.warning("no model section in %s (%s); the base model loads with the first task",
                           self.root / WORKER_FILE, e)
            return None

    def pending(self) -> list[str]:
        """Assignments without a result, in sequence order (hidden partial copies are not yet assignments)."""
        try:
            names = [entry.name for entry in os.scandir(self.assign_dir) if entry.name.isdigit()]
        except OSError:
            return []
        return [seq for seq in sorted(names, key=int) if not self.result_path(seq).exists()]

    def assignment(self, seq: str) -> dict[str, Any]:
        return json.loads((self.assign_dir / seq / "assignment.json").read_text())

    def cancelled(self, seq: str) -> bool:
        return (self.cancel_dir / seq).exists()

    def result_path(self, seq: str) -> Path:
        return self.results_dir / f"{seq}.json"

    def write_result(self, seq: str, payload: dict[str, Any]) -> None:
        write_json_atomic(self.result_path(seq), {"seq": seq, "finished_at": time.time(), **payload})


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
            write_json_atomic(self.path, payload)
        except OSError as e:  # a full or vanished disk: the server will see the heartbeat stop
            logger.warning("cannot write %s: %s", self.path, e)
