"""Test-only: SIGKILL the `fedhpc run` server at an exact code point.

`sitecustomize` installs this in the server process (only there: facility
workers inherit the environment but run `fedhpc worker`) when
``FEDHPC_TEST_SERVER_KILL=<point>[:<nth>]`` names a point; the server then
SIGKILLs itself the `nth` time (default 1) execution passes that point. A
SIGKILL leaves no chance to clean up, which is the point: it is a power cut,
an OOM kill or a `scancel` of the server's own allocation. Nothing in `src/`
knows about it; the wrapped names are the ones the server's modules keep stable.

Before dying the server prints ``KILLED_AT <point>:<nth>`` on stderr, so a test can
tell that it died where it was asked to, not somewhere else.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MARKER = "KILLED_AT"
_INIT_TASK = "init-task.json"


class _Trigger:
    """Counts passes through one point and kills the process on the `nth`."""

    def __init__(self, point: str, nth: int):
        self.point = point
        self.nth = nth
        self.passes = 0

    def hit(self) -> None:
        self.passes += 1
        if self.passes == self.nth:
            die(f"{self.point}:{self.nth}")


def die(where: str) -> None:
    """SIGKILL this process, saying where first (stderr is the test's pipe)."""
    sys.stderr.write(f"\n{MARKER} {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner: Any, name: str, trigger: _Trigger, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Kill after `owner.name` returns (for calls where `when(*args)` holds)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            trigger.hit()
        return result

    setattr(owner, name, wrapper)


def _before(owner: Any, name: str, trigger: _Trigger) -> None:
    """Kill when `owner.name` is entered, before it does anything."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        trigger.hit()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _kill_once_init_worker_runs(trigger: _Trigger) -> None:
    """Round 0: kill the server once its init worker has exec'd (it is running, not yet finished)."""
    import fedhpc.run.global_chain as globals_module

    original = globals_module.run_server_command

    @functools.wraps(original)
    def wrapper(name: str, argv: list[str], log_dir: Path) -> str:
        if name == "init":
            threading.Thread(target=_watch_for_init_child, args=(trigger,), daemon=True).start()
        return original(name, argv, log_dir)

    globals_module.run_server_command = wrapper


def _watch_for_init_child(trigger: _Trigger) -> None:
    me = str(os.getpid())
    while True:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = stat.read_text().rsplit(")", 1)[1].split()[1]
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if parent == me and _INIT_TASK.encode() in cmdline:
                trigger.hit()
                return
        time.sleep(0.02)


def _kill_mid_aggregation(trigger: _Trigger) -> None:
    """Kill after the aggregator has yielded the first tensor of the new global (half-written)."""
    from fedhpc.run.global_chain import GlobalChain

    original = GlobalChain.commit

    @functools.wraps(original)
    def commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        aggregate = self.aggregator.aggregate

        def first_then_die(*a: Any, **k: Any) -> Iterator[Any]:
            for index, item in enumerate(aggregate(*a, **k)):
                yield item
                if index == 0:
                    trigger.hit()

        self.aggregator.aggregate = first_then_die
        try:
            return original(self, *args, **kwargs)
        finally:
            del self.aggregator.aggregate

    GlobalChain.commit = commit


def _install_point(point: str, trigger: _Trigger) -> None:
    from fedhpc.facility.launchers.local import LocalLauncher
    from fedhpc.facility.movers.filesystem import FilesystemMover
    from fedhpc.run.global_chain import GlobalChain
    from fedhpc.run.intake import Intake
    from fedhpc.run.launches import Launches
    from fedhpc.run.ledger import Ledger

    if point == "init":
        _kill_once_init_worker_runs(trigger)
    elif point == "staging":  # a global was pushed to a facility
        _after(FilesystemMover, "push", trigger, lambda self, local_dir, relative: relative.startswith("global/"))
    elif point == "after_submit":  # the job runs, the ledger has no `submitted` for it yet
        _after(LocalLauncher, "submit", trigger)
    elif point == "training":  # the server has looked at its running jobs `nth` times
        _after(Launches, "poll", trigger)
    elif point == "pulling":  # an update was pulled into the run directory, not yet verified
        _after(FilesystemMover, "pull", trigger, lambda self, relative, local_dir: relative.startswith("updates/"))
    elif point == "verifying":  # an update verified, not yet recorded as accepted
        _after(Intake, "verified", trigger)
    elif point == "aggregating":
        _kill_mid_aggregation(trigger)
    elif point == "before_commit":  # global (and server state) written, ledger row not
        _before(Ledger, "complete_round", trigger)
    elif point == "after_commit":  # ledger row committed, nothing after it done
        _after(Ledger, "complete_round", trigger)
    elif point == "pruning":
        _before(GlobalChain, "prune", trigger)
    elif point == "report":
        import fedhpc.report.html as html

        _before(html, "write_report", trigger)
    else:
        raise SystemExit(f"FEDHPC_TEST_SERVER_KILL: unknown point {point!r}; one of {', '.join(POINTS)}")


POINTS = (
    "init", "staging", "after_submit", "training", "pulling", "verifying", "aggregating",
    "before_commit", "after_commit", "pruning", "report",
)  # fmt: skip


def install(spec: str) -> None:
    """Arm the kill named by `spec` (``<point>[:<nth>]``) in this process."""
    point, _, nth = spec.partition(":")
    _install_point(point, _Trigger(point, int(nth) if nth else 1))
