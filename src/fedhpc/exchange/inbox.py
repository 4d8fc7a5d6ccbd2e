"""The persistent-worker inbox, spelled once for both sides (docs/contracts.md, "Persistent worker inbox").

The server (`fedhpc.facility.launchers.persistent`) publishes its entries through
the facility's mover and peeks at the worker's files; the worker
(`fedhpc.worker.inbox`) reads and writes the same files on its own filesystem.
Both take the names, formats and payloads from here, so neither can drift from
the other. Paths are relative to the inbox, with ``/`` (a mover's relative
path, or a `Path` joined onto the inbox root). Every file is JSON as
`fedhpc.atomic_files.atomic_write_json` writes it (compact, one line).
"""

from __future__ import annotations

import json
from typing import Any

WORKERS = "workers"
"""The staging-area folder that holds every inbox: ``workers/wNNNN``."""
WORKER_FILE = "worker.json"
"""The server's note in a new inbox: {"worker", "facility", "model", "created_at"}; `model` lets the base load early."""
ASSIGN = "assign"
ASSIGNMENT_FILE = "assignment.json"
CANCEL = "cancel"
CANCEL_FILE = "cancel.json"
STOP = "stop"
"""A directory the server publishes (holding `STOP_FILE`), or a plain file anyone may write."""
STOP_FILE = "stop.json"
RESULTS = "results"
HEARTBEAT_FILE = "heartbeat.json"


def worker_id(number: int) -> str:
    """``w0001``, ``w0002``, ...: never reused, so an inbox belongs to one worker job."""
    return f"w{number:04d}"


def inbox_path(worker: str) -> str:
    """The inbox of worker `worker`, relative to the staging area."""
    return f"{WORKERS}/{worker}"


def seq_name(number: int) -> str:
    """An assignment's sequence number as it names files: six digits, 1, 2, ... per inbox."""
    return f"{number:06d}"


def is_seq(name: str) -> bool:
    """Whether a directory entry under `ASSIGN` is an assignment (a mover's hidden partial copy is not)."""
    return name.isdigit()


def assignment_entry(seq: str) -> str:
    """The directory the server publishes an assignment as; it holds `ASSIGNMENT_FILE`."""
    return f"{ASSIGN}/{seq}"


def cancel_entry(seq: str) -> str:
    """The directory the server publishes to withdraw an assignment; it holds `CANCEL_FILE`."""
    return f"{CANCEL}/{seq}"


def result_file(seq: str) -> str:
    """The worker's result of an assignment, written once."""
    return f"{RESULTS}/{seq}.json"


def worker_note(worker: str, facility: str, model: dict[str, Any] | None, created_at: float) -> dict[str, Any]:
    """`WORKER_FILE`'s content; `model` is the experiment's model section as JSON, or None."""
    return {"worker": worker, "facility": facility, "model": model, "created_at": created_at}


def assignment(seq: str, task: str | None, name: str, assigned_at: float) -> dict[str, Any]:
    """`ASSIGNMENT_FILE`'s content: `task` is the facility path of the task.json to train."""
    return {"seq": seq, "task": task, "name": name, "assigned_at": assigned_at}


def result(seq: str, finished_at: float, fields: dict[str, Any]) -> dict[str, Any]:
    """A result file's content: ``ok`` and what the worker reports with it (`fields`)."""
    return {"seq": seq, "finished_at": finished_at, **fields}


def read_result(raw: bytes) -> dict[str, Any]:
    """A result file as the server judges it; one it cannot read is a failed task, said why."""
    try:
        value = json.loads(raw)
    except ValueError as e:
        return {"ok": False, "error": f"unreadable result file: {e}"}
    return value if isinstance(value, dict) else {"ok": False, "error": "the result is not an object"}
