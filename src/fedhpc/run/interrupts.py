"""SIGINT and SIGTERM on the server: stop at the next safe point, or at once on the second signal.

A signal arriving while the server writes a global, a ledger row or a task
must not tear it, so the first one only raises a flag: the round loops look at
it between polls and before every submission (`check`), which is at most a
poll interval (about half a second) away. Someone pressing Ctrl-C twice wants
out now, so the second signal raises `RunInterrupted` wherever the server is;
what it leaves half-written is debris a resume already discards.

What happens to the jobs in flight is `OnInterrupt`: kept (batch launchers,
whose allocation is paid for: a resume collects their updates) or cancelled
(local and simulated jobs, which would otherwise run on unattended).
"""

from __future__ import annotations

import enum
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from fedhpc.errors import RunInterrupted

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)
BATCH_LAUNCHERS = frozenset({"parsl", "globus-compute"})
"""Launcher kinds whose jobs hold an allocation already paid for: `auto` keeps them on an interrupt."""


class OnInterrupt(str, enum.Enum):
    """`fedhpc run --on-interrupt`: what happens to jobs in flight when the server is interrupted."""

    AUTO = "auto"
    CANCEL = "cancel"
    KEEP = "keep"

    def keeps(self, launcher_kinds: set[str]) -> bool:
        """Whether jobs on these launchers are left running; `auto` keeps them only if all are batch jobs."""
        if self is OnInterrupt.AUTO:
            return bool(launcher_kinds) and launcher_kinds <= BATCH_LAUNCHERS
        return self is OnInterrupt.KEEP


class StopFlag:
    """Set by the signal handlers; read by the round loops at their safe points."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._shielded = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def hurried(self) -> bool:
        """A second signal came: cancel what is in flight, whatever the mode, and wait for nothing."""
        return self.count > 1

    def check(self) -> None:
        """Raise `RunInterrupted` if a stop was asked for; call where stopping leaves nothing half-done."""
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.signum = self.signum or signum
        if self.count == 1:
            log.warning("%s: stopping at the next safe point (again to stop at once)", signal.Signals(signum).name)
            return
        if not self._shielded:
            raise RunInterrupted(self.signum)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """While the server settles its jobs after a stop, a further signal is counted, not raised.

        Raising there would leave jobs neither cancelled nor recorded as kept: the orphans a stop exists to avoid.
        """
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only; elsewhere nothing is installed)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in HANDLED}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
