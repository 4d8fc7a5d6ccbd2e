"""Fold a run's `metrics.jsonl` events into what the report shows.

Tolerant by design: the log may come from a run that is still going, was killed,
was resumed (events of a round repeated), or from an older fedhpc that wrote
fewer fields. A missing field is a gap in a table, never an exception. Where a
round/facility has several outcomes (a retried job), the last one counts; bytes
and timeline spans count every time they happened.

A job's timings are matched to it by (facility, attempt id): every facility's
first job of round N is ``rNNNN-a0``, so the attempt id alone would hand each
facility the timings of whichever reported last.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fedhpc.report.sessions import FATES, Session, SessionLog, ended_text
from fedhpc.report.spans import Span, describe, split_job

#: what an `aggregated` event of a private run says of its round (run/privacy_budget.py)
PRIVACY_FIELDS = ("epsilon", "delta", "noise_multiplier", "clip_norm", "clipped", "next_clip_norm", "noise_std")
# Eval keys that count examples rather than score them: shown nowhere as a metric.
COUNT_KEYS = frozenset({"n", "examples"})


@dataclass
class Problem:
    """A rejected update or a job that ended without one."""

    round: int | None
    facility: str
    kind: str  # "rejected" | "job <state>"
    reason: str
    message: str


@dataclass
class TaskEval:
    """One task's evaluation in one round: its primary metric beside the trivial baseline's (None: not known)."""

    primary: str
    higher_is_better: bool
    n: int | None
    value: float | None
    ci95: tuple[float, float] | None
    baseline: str
    baseline_value: float | None
    baseline_ci95: tuple[float, float] | None
    beats_baseline: bool


@dataclass
class RunSummary:
    name: str = "unnamed run"
    rounds_planned: int | None = None
    rounds_completed: set[int] = field(default_factory=set)
    facilities: list[str] = field(default_factory=list)
    first_ts: float | None = None
    last_ts: float | None = None
    finished: bool = False
    stopped: str | None = None  # "interrupted" or "stopped" (an error, a time limit): the last session's end
    stop_reason: str = ""
    sessions: int = 0
    session_log: list[Session] = field(default_factory=list)
    # (ts, label, hover text, anchor): where a server stopped (interrupted, stopped, killed) and the next resumed
    session_marks: list[tuple[float, str, str, str]] = field(default_factory=list)
    bytes_staged: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    bytes_pulled: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    global_bytes: dict[int, int] = field(default_factory=dict)
    losses: dict[str, dict[int, list[float | None]]] = field(default_factory=lambda: defaultdict(dict))
    round_seconds: dict[int, float] = field(default_factory=dict)
    round_end_ts: dict[int, float] = field(default_factory=dict)
    outcomes: dict[str, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    problems: list[Problem] = field(default_factory=list)
    evals: dict[int, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    eval_tasks: dict[int, dict[str, TaskEval]] = field(default_factory=dict)
    lenient_rounds: set[int] = field(default_factory=set)  # rounds scored with lenient (not LlaSMol's) extraction
    spans: list[Span] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    privacy: dict[int, dict[str, Any]] = field(default_factory=dict)  # privacy on: each round's ε, δ, clipping

    @property
    def status(self) -> str:
        """The badge: finished (every round), interrupted or stopped (the reason is `stop_reason`), or incomplete
        (no end recorded: still running, or killed)."""
        if self.finished:
            return "finished"
        return self.stopped or "incomplete"

    @property
    def wall_seconds(self) -> float | None:
        if self.first_ts is None or self.last_ts is None:
            return None
        return self.last_ts - self.first_ts

    @property
    def rounds(self) -> list[int]:
        """Every round any event names, ascending (round 0 only when something happened in it)."""
        seen = set(self.rounds_completed) | set(self.round_seconds)
        for per_round in (self.bytes_staged, self.bytes_pulled, self.global_bytes, self.evals):
            seen |= set(per_round)
        for by_round in list(self.losses.values()) + list(self.outcomes.values()):
            seen |= set(by_round)
        return sorted(seen)

    def total_staged(self) -> int:
        return sum(sum(v.values()) for v in self.bytes_staged.values())

    def total_pulled(self) -> int:
        return sum(sum(v.values()) for v in self.bytes_pulled.values())


def number(value: Any) -> float | None:
    """`value` as a finite float, or None (missing, null, a string, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def integer(value: Any) -> int | None:
    n = number(value)
    return int(n) if n is not None else None


def mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def summarize(events: list[dict[str, Any]]) -> RunSummary:
    run = RunSummary()
    sessions = SessionLog()
    submitted: dict[tuple[int | None, str], float] = {}
    # keyed by (facility, attempt id) (a job's update may be accepted in a later round), or (facility, round)
    accepted_times: dict[tuple[str, object], tuple[float | None, float | None]] = {}
    queue_waits: dict[tuple[str, object], float] = {}  # seconds from submission until the job was seen running
    pulls: dict[tuple[str, object], float] = {}  # seconds the server took to pull the job's update
    jobs: list[tuple[Span, tuple[str, object]]] = []

    def job_key(f: str, event: dict[str, Any], r: int | None) -> tuple[str, object]:
        return f, event.get("attempt") or r

    def facility_of(event: dict[str, Any]) -> str:
        name = str(event.get("facility", "?"))
        if name not in run.facilities:
            run.facilities.append(name)
        return name

    def span(lane: str, kind: str, event: dict[str, Any], **extra: Any) -> Span | None:
        seconds = number(event.get("seconds"))
        start = number(event.get("start"))
        if seconds is None:
            return None
        if start is None:
            ts = number(event.get("ts"))
            if ts is None:
                return None
            start = ts - seconds  # an event written at the end of what it times
        result = Span(lane, kind, start, max(seconds, 0.0), integer(event.get("round")), **extra)
        run.spans.append(result)
        return result

    for event in events:
        kind = event.get("event")
        ts = number(event.get("ts"))
        for t in (ts, number(event.get("start"))):
            if t is not None:
                run.first_ts = t if run.first_ts is None else min(run.first_ts, t)
                run.last_ts = t if run.last_ts is None else max(run.last_ts, t)
        r = integer(event.get("round"))
        sessions.observe(event, ts, str(event["facility"]) if event.get("facility") is not None else None)

        if kind == "run_started":
            run.sessions += 1
            run.finished = False
            run.stopped, run.stop_reason = None, ""
            if event.get("name"):
                run.name = str(event["name"])
            run.rounds_planned = integer(event.get("rounds")) or run.rounds_planned
            for name in event.get("facilities") or []:
                if str(name) not in run.facilities:
                    run.facilities.append(str(name))
        elif kind == "staged":
            f = facility_of(event)
            if r is not None:
                run.bytes_staged[r][f] = run.bytes_staged[r].get(f, 0) + (integer(event.get("bytes")) or 0)
            span(f, "stage", event)
        elif kind == "submitted":
            f = facility_of(event)
            if ts is not None:
                submitted[(r, f)] = ts
        elif kind == "job_finished":
            f = facility_of(event)
            state = str(event.get("state", "done"))
            failed = state != "done"
            if number(event.get("start")) is None and (r, f) in submitted and number(event.get("seconds")):
                event = {**event, "start": submitted[(r, f)]}
            job = span(f, "job", event, note=f"job {state}", failed=failed, attempt=str(event.get("attempt") or ""))
            if job is not None:
                run.spans.remove(job)  # split into queue/load/train later, once `accepted` is known
                jobs.append((job, job_key(f, event, r)))
            if failed:
                reason = str(event.get("reason") or f"returncode {event.get('returncode')}")
                run.outcomes[f][r] = f"failed: {state}"  # type: ignore[index]
                run.problems.append(Problem(r, f, f"job {state}", reason, str(event.get("reason") or "")))
        elif kind == "job_running":
            wait = number(event.get("queue_seconds"))
            if wait is not None:
                queue_waits[job_key(facility_of(event), event, r)] = wait
        elif kind == "pulled":
            f = facility_of(event)
            if r is not None:
                run.bytes_pulled[r][f] = run.bytes_pulled[r].get(f, 0) + (integer(event.get("bytes")) or 0)
            attempt = str(event.get("attempt") or "")
            pull = span(f, "pull", event, note=f"attempt {attempt}" if attempt else "", attempt=attempt)
            if pull is not None:
                pulls[job_key(f, event, r)] = pull.seconds
        elif kind == "accepted":
            f = facility_of(event)
            loss = event.get("loss")
            if r is not None:
                run.losses[f][r] = [number(v) for v in loss] if isinstance(loss, list) else []
                run.outcomes[f][r] = "accepted"
            run.samples[f] += integer(event.get("num_samples")) or 0
            run.tokens[f] += integer(event.get("tokens")) or 0
            accepted_times[job_key(f, event, r)] = (number(event.get("load_seconds")),
                                                    number(event.get("train_seconds")))
        elif kind == "rejected":
            f = facility_of(event)
            if r is not None:
                run.outcomes[f][r] = "rejected"
            run.problems.append(
                Problem(r, f, "rejected", str(event.get("reason", "?")), str(event.get("message", "")))
            )
        elif kind == "aggregated":
            if r is not None and integer(event.get("bytes")) is not None:
                run.global_bytes[r] = integer(event.get("bytes"))  # type: ignore[assignment]
            if r is not None and "delta" in event:  # privacy on (docs/privacy.md)
                run.privacy[r] = {key: event.get(key) for key in PRIVACY_FIELDS}
            if r == 0:  # the initial global, built by one worker process: no update was aggregated
                init = span("server", "init", event)
                if init is not None:
                    run.round_end_ts[0] = init.start + init.seconds
            else:
                span("server", "aggregate", event, note=f"{event.get('num_updates', '?')} updates")
        elif kind == "round_complete":
            if r is not None:
                run.rounds_completed.add(r)
                seconds = number(event.get("seconds"))
                if seconds is not None:
                    run.round_seconds[r] = seconds
                if ts is not None:
                    run.round_end_ts[r] = ts
        elif kind == "eval":
            scores = event.get("scores")  # written by fedhpc before results carried intervals and baselines
            if r is not None and isinstance(event.get("tasks"), dict):
                _fold_eval_tasks(run, r, event["tasks"])
                if event.get("lenient") is True:
                    run.lenient_rounds.add(r)
            elif r is not None and isinstance(scores, dict):
                into = run.evals.setdefault(r, {})
                for task, metrics in scores.items():
                    if isinstance(metrics, dict):
                        into.setdefault(str(task), {}).update(
                            {str(m): number(v) for m, v in metrics.items() if m not in COUNT_KEYS}
                        )
                    else:  # a bare {task: value}
                        into.setdefault(str(task), {})["score"] = number(metrics)
            span("server", "eval", event)
        elif kind == "job_cancelled":
            span(facility_of(event), "cancelled", event, attempt=str(event.get("attempt") or ""))
        elif kind == "run_interrupted":
            run.stopped = "interrupted"
            signal_name, done = event.get("signal", "a signal"), event.get("rounds_completed")
            run.stop_reason = f"interrupted by {signal_name} after round {done}"
        elif kind == "run_stopped":
            run.stopped = "stopped"
            run.stop_reason = str(event.get("reason") or event.get("error") or "")
        elif kind == "run_finished":
            run.finished = True
            done = integer(event.get("rounds_completed"))
            if done:
                run.rounds_completed |= set(range(1, done + 1)) - {0}

    for job, key in jobs:
        fates = "; ".join(FATES[fate] for fate in sessions.fates.get(key, []))  # type: ignore[arg-type]
        parts = split_job(job, *accepted_times.get(key, (None, None)), queue_waits.get(key))
        describe(parts, pulls.get(key), fates)
        run.spans.extend(parts)
    _fold_sessions(run, sessions)
    run.spans.sort(key=lambda s: s.start)
    return run


def _fold_sessions(run: RunSummary, sessions: SessionLog) -> None:
    """A resumed run: each server's session, the time none ran, and the jobs that outlived their server."""
    sessions.finish()
    run.session_log = sessions.sessions
    for start, end, what in sessions.downtimes():
        run.spans.append(Span("server", "down", start, end - start, None, note=what))
    for before, after in zip(sessions.sessions, sessions.sessions[1:]):
        if before.end is not None:
            run.session_marks.append((before.end, before.ended, f"server {ended_text(before)}", "end"))
        if after.start is not None:
            label = f"resumed after round {after.resumed_from}"
            run.session_marks.append((after.start, "resumed", label, "start"))
    for s in run.spans:
        if s.kind == "cancelled":  # and perhaps relaunched after the restart
            s.note = "; ".join(FATES[fate] for fate in sessions.fates.get((s.lane, s.attempt), ["cancelled"]))
    for o in sessions.orphans:
        run.spans.append(Span(o.facility, "orphan", o.start, o.end - o.start, o.round,
                              note=f"attempt {o.attempt} · {o.detail}", attempt=o.attempt))


def _fold_eval_tasks(run: RunSummary, r: int, tasks: dict[str, Any]) -> None:
    """An `eval` event's `tasks` ({task: {"primary", "metrics": {m: {"value", "ci95"}}, "baseline", ...}})."""
    values = run.evals.setdefault(r, {})
    verdicts = run.eval_tasks.setdefault(r, {})
    for task, entry in tasks.items():
        if not isinstance(entry, dict):
            continue
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
        values.setdefault(str(task), {}).update({str(m): number(_field(v, "value")) for m, v in metrics.items()})
        primary = entry.get("primary")
        if not isinstance(primary, str):
            continue
        baseline = entry.get("baseline") if isinstance(entry.get("baseline"), dict) else {}
        theirs = baseline.get("metrics") if isinstance(baseline.get("metrics"), dict) else {}
        verdicts[str(task)] = TaskEval(
            primary=primary,
            higher_is_better=entry.get("higher_is_better") is not False,
            n=integer(entry.get("n")),
            value=number(_field(metrics.get(primary), "value")),
            ci95=_interval(_field(metrics.get(primary), "ci95")),
            baseline=str(baseline.get("name", "?")),
            baseline_value=number(_field(theirs.get(primary), "value")),
            baseline_ci95=_interval(_field(theirs.get(primary), "ci95")),
            beats_baseline=entry.get("beats_baseline") is True,
        )


def _field(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _interval(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    lo, hi = number(value[0]), number(value[1])
    return None if lo is None or hi is None else (lo, hi)
