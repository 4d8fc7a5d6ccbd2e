"""The orchestrator's sense of time: wall time for real runs, virtual time for simulated ones.

The server only ever asks two things of time: what time it is (deadlines,
timeouts, event timestamps) and to wait until the next poll. Behind that
`Clock` protocol, `VirtualClock` lets ``fedhpc simulate`` replay an hour of
queue waits and training in seconds: instead of sleeping it jumps straight to
the next moment anything can change, which the simulated launchers announce
with `VirtualClock.schedule`. Durations there are a function of the job, not of
wall time, so a simulated run is deterministic however fast the machine is.
"""

from __future__ import annotations

import heapq
import time
from typing import Protocol

from fedhpc.errors import SimulationStalled

POLL_SECONDS = 0.5
"""How long `RealClock` sleeps at most between the orchestrator's polls."""


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (real or virtual)."""
        ...

    def sleep_until(self, wake_at: float | None) -> None:
        """Wait between polls; `wake_at` is the earliest time the caller knows something happens, if any."""
        ...


class RealClock:
    """Wall time; waits at most `poll_seconds`, since jobs end without telling the server."""

    def __init__(self, poll_seconds: float = POLL_SECONDS):
        self.poll_seconds = poll_seconds

    def now(self) -> float:
        return time.time()

    def sleep_until(self, wake_at: float | None) -> None:
        delay = self.poll_seconds if wake_at is None else min(self.poll_seconds, max(0.0, wake_at - time.time()))
        time.sleep(delay)


class VirtualClock:
    """Virtual seconds that only move when the orchestrator waits, straight to the next event."""

    def __init__(self, start: float):
        self._now = float(start)
        self._scheduled: list[float] = []  # a heap of announced times

    def now(self) -> float:
        return self._now

    def schedule(self, at: float) -> None:
        """Announce that something (a job starting or ending) changes at `at`, so a wait stops there."""
        heapq.heappush(self._scheduled, float(at))

    def sleep_until(self, wake_at: float | None) -> None:
        """Jump to the earliest of `wake_at` and the next announced time after now.

        Raises `SimulationStalled` when there is neither: waiting could never end.
        """
        while self._scheduled and self._scheduled[0] <= self._now:
            heapq.heappop(self._scheduled)
        candidates = [t for t in (wake_at, self._scheduled[0] if self._scheduled else None) if t is not None]
        if not candidates:
            raise SimulationStalled(
                "the simulated run has nothing left to wait for: no job is scheduled to end and no deadline "
                "or timeout is pending, so virtual time cannot move on"
            )
        self.advance_to(min(candidates))

    def advance_to(self, t: float) -> None:
        """Move on to `t` (a resumed run's last recorded time); earlier times are ignored: time never runs back."""
        self._now = max(self._now, float(t))
