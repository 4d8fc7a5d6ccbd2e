"""What a run directory's ledger says about the run: each facility's state, and each failure in one line.

`fedhpc status` shows `run_status` as a table or as JSON (docs/configuration.md lists the keys), and
`fedhpc run` prints `failure_lines` when a run ends with failures. Both read only the ledger, so they
work alike on a finished run, a stopped one and one whose server is still writing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedhpc.report.progress import one_line
from fedhpc.run.ledger import Event, Ledger
from fedhpc.run.rundir import RunDir

#: A facility's state after each of these events of its own (the latest one wins).
FACILITY_STATES = {
    "staged": "queued",
    "launching": "queued",
    "relaunched": "queued",
    "submitted": "queued",
    "reattached": "queued",
    "job_running": "training",
    "collected_after_restart": "training",
    "pulled": "training",
    "job_kept": "kept",
    "accepted": "idle",
    "reused": "idle",
    "late_carried": "idle",
    "late_dropped": "idle",
    "job_cancelled": "idle",
    "superseded": "idle",
    "job_abandoned": "idle",
    "facility_retired": "retired",
}
RUN_ENDS = {"run_finished": "finished", "run_stopped": "stopped", "run_interrupted": "interrupted"}


@dataclass
class FacilityStatus:
    name: str
    state: str = "idle"
    round: int | None = None
    loss: float | None = None
    failure: str | None = None
    failure_round: int | None = None
    log: str | None = None


@dataclass
class RunStatus:
    run_dir: str
    name: str | None
    state: str
    rounds_complete: int
    rounds_planned: int | None
    best_round: int | None
    reason: str | None
    epsilon: float | None = None  # privacy on: ε spent after the last complete round, at `delta`
    delta: float | None = None
    facilities: list[FacilityStatus] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The `status --json` document: every key always present (null when unknown)."""
        return asdict(self)


def failure_of(event: Event, run_dir: RunDir) -> tuple[str, str, Path | None] | None:
    """(what failed, its reason in one line, its log if kept) for a failed job or rejected update, else None."""
    if event.event == "job_finished" and event.detail.get("state") not in ("done", None):
        reason = str(event.detail.get("reason") or f"exit {event.detail.get('returncode')}")
        kind = f"job {event.detail['state']}"
    elif event.event == "rejected":
        reason, kind = str(event.detail.get("message") or ""), f"update rejected ({event.detail.get('reason')})"
    else:
        return None
    return kind, one_line(reason), failure_log(run_dir, event.round, event.facility, event.detail.get("attempt"))


def failure_log(run_dir: RunDir, round: int | None, facility: str | None, attempt: object) -> Path | None:
    """The stderr log of a facility's attempt, if the run directory holds one."""
    if not isinstance(attempt, str) or facility is None:
        return None
    path = run_dir.log_dir(round or 0) / f"{facility}-{attempt}.err"
    return path if path.exists() else None


def failure_lines(ledger: Ledger, run_dir: RunDir, *, this_server: bool = False) -> list[str]:
    """One line per failed job and rejected update; `this_server`: only since the latest `run_started`.

    A resumed run counts only its own failures: those of the server before it are in that server's output.
    """
    events = ledger.events()
    if this_server:
        starts = [i for i, event in enumerate(events) if event.event == "run_started"]
        events = events[starts[-1]:] if starts else events
    lines = []
    for event in events:
        failure = failure_of(event, run_dir)
        if failure is not None:
            kind, reason, log = failure
            lines.append(f"{event.facility} round {event.round}: {kind}: {reason}" + (f" (log: {log})" if log else ""))
    return lines


def recorded_failures(run_root: Path) -> list[str]:
    """`failure_lines` of the latest server of a run directory that has stopped (none if it has no ledger)."""
    run_dir = RunDir(run_root)
    if not run_dir.exists():
        return []
    ledger = Ledger(run_dir.ledger_path)
    try:
        return failure_lines(ledger, run_dir, this_server=True)
    finally:
        ledger.close()


def run_status(run_root: Path) -> RunStatus:
    """The run's and each facility's state as the ledger's latest events say; the caller checks it exists."""
    run_dir = RunDir(run_root)
    ledger = Ledger(run_dir.ledger_path)
    try:
        events = ledger.events()
        completed = ledger.last_complete_round() or 0
        best = ledger.get_meta("best_round")  # run/best_round.py: {"round": ..., "score": ..., ...}
        privacy = ledger.round_detail(completed) or {}  # its ε and δ, when privacy is on
    finally:
        ledger.close()
    starts = [event for event in events if event.event == "run_started"]
    start = starts[-1] if starts else None
    ends = [event for event in events if event.event in RUN_ENDS and (start is None or event.id > start.id)]
    names = list(start.detail.get("facilities", [])) if start is not None else []
    facilities = {name: FacilityStatus(name) for name in names}
    for event in events:
        if event.facility is None:
            continue
        row = facilities.setdefault(event.facility, FacilityStatus(event.facility))
        _apply(row, event, run_dir)
    if ends:
        for row in facilities.values():
            row.state = "done" if row.state == "idle" else row.state
    end = ends[-1] if ends else None
    return RunStatus(
        run_dir=str(run_dir.root),
        name=start.detail.get("name") if start is not None else None,
        state=RUN_ENDS[end.event] if end is not None else "running",
        rounds_complete=completed,
        rounds_planned=start.detail.get("rounds") if start is not None else None,
        best_round=json.loads(best).get("round") if best is not None else None,
        reason=one_line(str(end.detail["reason"])) if end is not None and end.detail.get("reason") else None,
        epsilon=privacy.get("epsilon"),
        delta=privacy.get("delta"),
        facilities=list(facilities.values()),
    )


def _apply(row: FacilityStatus, event: Event, run_dir: RunDir) -> None:
    """Move one facility's status on by one of its events."""
    if event.round is not None:
        row.round = event.round if row.round is None else max(row.round, event.round)
    failure = failure_of(event, run_dir)
    if failure is not None:
        kind, reason, log = failure
        row.state, row.failure, row.failure_round = "failed", f"{kind}: {reason}", event.round
        row.log = str(log) if log is not None else None
    elif event.event == "job_finished":
        row.state = "training"  # done: its update is still to be pulled and verified
    elif event.event in FACILITY_STATES:
        row.state = FACILITY_STATES[event.event]
    if event.event == "accepted":
        losses = [x for x in event.detail.get("loss") or [] if isinstance(x, (int, float))]
        row.loss = float(losses[-1]) if losses else row.loss
