"""A resumed run's server sessions, how each ended, and the jobs that outlived the server that launched them.

A run interrupted (SIGINT/SIGTERM), stopped or killed and then resumed is one
run dir written by several servers. Without this the report would draw it as
one continuous run: the time the server was down would look like a slow round,
and a job collected or relaunched after the restart would look like any other.
Here each `run_started` opens a session; its end is `run_interrupted`,
`run_stopped`, `run_finished`, or (a SIGKILL) nothing at all, and then the last
event it wrote is where it died. What became of the jobs in flight is read from
`job_kept`, `job_cancelled`, `reattached`, `collected_after_restart` and
`relaunched` (docs/reliability.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What became of a job across a restart, as the timeline and the sessions table say it.
FATES = {
    "kept": "left running at the interruption",
    "cancelled": "cancelled at the interruption",
    "reattached": "reattached after the restart",
    "collected": "update collected after the restart",
    "relaunched": "relaunched after the restart",
}


@dataclass
class Session:
    """One server's life in the run dir: `end` is the last event it wrote (None: it wrote nothing timed)."""

    start: float | None
    resumed_from: int | None
    end: float | None = None
    ended: str = "running"  # finished | interrupted | stopped | killed (no end recorded) | running (the last one)
    reason: str = ""
    jobs: dict[str, list[str]] = field(default_factory=dict)  # fate -> ["alpha r0001-a0", ...]

    def note(self, fate: str, label: str) -> None:
        self.jobs.setdefault(fate, []).append(label)


@dataclass
class Orphan:
    """A job whose server stopped before it ended: from its launch until the server let go of it or found it."""

    facility: str
    attempt: str
    round: int | None
    start: float
    end: float
    fate: str  # a FATES key
    detail: str


class SessionLog:
    """Folds the events a run's sessions wrote, one at a time, in file order."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.orphans: list[Orphan] = []
        self.fates: dict[tuple[str, str], list[str]] = {}  # (facility, attempt) -> what happened to it, in order
        self._launched: dict[tuple[str, str], tuple[float, int | None, int]] = {}  # -> (start, round, session)

    def observe(self, event: dict[str, Any], ts: float | None, facility: str | None) -> None:
        kind = event.get("event")
        attempt = event.get("attempt")
        key = (facility, attempt) if facility is not None and isinstance(attempt, str) else None
        if kind == "run_started":
            resumed = event.get("resumed_from")
            if self.sessions and self.sessions[-1].ended == "running":
                self.sessions[-1].ended = "killed"
            self.sessions.append(Session(ts, resumed if isinstance(resumed, int) else None))
            return
        session = self._current()
        if ts is not None and not event.get("recovered"):  # a recovered round_complete is the resume's, not its
            session.end = ts if session.end is None else max(session.end, ts)
        if kind in ("launching", "submitted") and key is not None:
            start = event.get("start", event.get("started_at", ts))
            if isinstance(start, (int, float)) and key not in self._launched:
                self._launched[key] = (float(start), _round(event), len(self.sessions) - 1)
        elif kind == "run_interrupted":
            session.ended = "interrupted"
            session.reason = f"{event.get('signal', 'a signal')} after round {event.get('rounds_completed')}"
        elif kind == "run_stopped":
            session.ended = "stopped"
            session.reason = str(event.get("reason") or event.get("error") or "")
        elif kind == "run_finished":
            session.ended = "finished"
        elif key is not None and kind in ("job_kept", "job_cancelled", "reattached", "collected_after_restart"):
            fate = {"job_kept": "kept", "job_cancelled": "cancelled", "collected_after_restart": "collected"}.get(
                str(kind), str(kind))
            self._fate(key, fate, session)
            if fate == "collected" and ts is not None and key in self._launched:
                self._orphan(key, ts, fate, "ran while the server was down (its end was not seen); "
                             "its update was collected after the restart")
        elif kind == "relaunched" and facility is not None and isinstance(event.get("previous"), str):
            old = (facility, str(event["previous"]))
            cancelled = "cancelled" in self.fates.get(old, [])  # then its bar is drawn already, to its cancel
            self._fate(old, "relaunched", session, f"{facility} {old[1]} as {attempt}")
            if old in self._launched and not cancelled:
                started, _, where = self._launched[old]
                died = self.sessions[where].end
                self._orphan(old, died if died is not None else started, "relaunched",
                             f"lost with the server that launched it; relaunched as {attempt} after the restart")

    def finish(self) -> None:
        """After the last event: a session that recorded no end before the next began was killed."""
        for session in self.sessions[:-1]:
            if session.ended == "running":
                session.ended = "killed"

    def downtimes(self) -> list[tuple[float, float, str]]:
        """(from, to, what) for each time no server ran between two sessions: the last event of one to the next's
        start. A simulated run resumes on its virtual clock at its last complete round: no gap is drawn there."""
        gaps = []
        for before, after in zip(self.sessions, self.sessions[1:]):
            if before.end is not None and after.start is not None and after.start > before.end:
                gaps.append((before.end, after.start, f"server {ended_text(before)}; resumed after round "
                                                      f"{after.resumed_from}"))
        return gaps

    def _current(self) -> Session:
        if not self.sessions:  # a log that starts mid-run (cut, or an older fedhpc): one session of unknown start
            self.sessions.append(Session(None, None))
        return self.sessions[-1]

    def _fate(self, key: tuple[str, str], fate: str, session: Session, label: str = "") -> None:
        self.fates.setdefault(key, []).append(fate)
        session.note(fate, label or f"{key[0]} {key[1]}")

    def _orphan(self, key: tuple[str, str], end: float, fate: str, detail: str) -> None:
        start, round_, _ = self._launched[key]
        self.orphans.append(Orphan(key[0], key[1], round_, start, max(end, start), fate, detail))


def ended_text(session: Session) -> str:
    """How a session ended, in words."""
    if session.ended == "interrupted":
        return f"interrupted by {session.reason}"
    if session.ended == "stopped":
        return f"stopped: {session.reason.splitlines()[0] if session.reason else 'no reason recorded'}"
    if session.ended == "killed":
        return "killed (no end recorded: SIGKILL, a crash or a lost node)"
    if session.ended == "running":
        return "no end recorded (still running, or killed)"
    return session.ended


def _round(event: dict[str, Any]) -> int | None:
    value = event.get("round")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
