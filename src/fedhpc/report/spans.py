"""A job as the timeline draws it: its bars (queue, start-up, load, train) and the words each bar shows.

A job's bars all carry the whole job's phase times, so hovering any of them tells
that facility's own queue, load, train and pull, not the round's or another
facility's (issue 19: every facility once showed the last one's train time).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Span:
    """Something that took time: `lane` is a facility or ``"server"``."""

    lane: str
    kind: str  # stage | queue | wait | startup | load | train | job | pull | init | aggregate | eval | down
    #            | cancelled | orphan
    start: float
    seconds: float
    round: int | None
    note: str = ""
    failed: bool = False
    attempt: str = ""


def split_job(job: Span, load: float | None, train: float | None, queue_wait: float | None = None) -> list[Span]:
    """A finished job as queue → start-up → load → train, from the worker's own timings.

    The queue wait is measured by the server (submission until it first saw the job
    running); start-up is what neither side accounted for: process and rank launch.
    Without a measured wait both are one "queue / start-up" span. A failed job, or one
    without timings, stays one span.
    """
    if job.failed or load is None or train is None:
        return [job]
    train = min(train, job.seconds)
    load = min(load, job.seconds - train)
    unaccounted = job.seconds - load - train

    def piece(kind: str, start: float, seconds: float) -> Span:
        return Span(job.lane, kind, start, seconds, job.round, attempt=job.attempt)

    if queue_wait is None:
        before = [piece("queue", job.start, unaccounted)]
    else:
        queue = min(max(queue_wait, 0.0), unaccounted)
        before = [
            piece("wait", job.start, queue),
            piece("startup", job.start + queue, unaccounted - queue),
        ]
    parts = [
        *before,
        piece("load", job.start + unaccounted, load),
        piece("train", job.start + unaccounted + load, train),
    ]
    return [p for p in parts if p.seconds > 0] or [job]


PHASE_WORDS = {"queue": "queue/start-up", "wait": "queue wait", "startup": "start-up", "load": "load",
               "train": "train", "job": "job"}


def describe(parts: list[Span], pull: float | None, fates: str) -> None:
    """Give every bar of one job the whole job's phases, so hovering any of them shows that facility's own times."""
    phases = " + ".join(f"{PHASE_WORDS.get(p.kind, p.kind)} {p.seconds:.2f} s" for p in parts)
    total = sum(p.seconds for p in parts)
    words = [f"attempt {parts[0].attempt}" if parts[0].attempt else "",
             f"job {total:.2f} s = {phases}" if len(parts) > 1 else "",
             f"pull {pull:.2f} s" if pull is not None else "", fates]
    note = " · ".join(w for w in words if w)
    for part in parts:
        part.note = f"{part.note} · {note}" if part.note and note else part.note or note
