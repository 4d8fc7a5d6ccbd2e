"""A job's processes on this machine, found through ``/proc`` and stopped without hitting a reused pid.

torchrun starts every rank in a new session, so stopping a job means signalling
the process groups of every process below torchrun, found while torchrun is
still their parent (orphans cannot be traced back). A process counts as the
one first seen only while its start time (``/proc/<pid>/stat`` field 22) is
the recorded one. Where there is no ``/proc``, only the job's own group is
signalled. Apart from the local launcher so that it reads as what it is: the
launcher starts and polls jobs, this module knows processes.
"""

from __future__ import annotations

import os
import signal
import time
from typing import NamedTuple, Protocol


class TreeRoot(Protocol):
    """The job whose tree is stopped: its pid (also its process group) and start time, and how it ends."""

    pid: int
    start_time: int | None

    def ended(self) -> bool: ...

    def wait(self) -> int | None: ...


def stop_tree(job: TreeRoot, grace_s: float) -> int | None:
    """SIGTERM the job's group and the groups of all its descendants; SIGKILL what is left after `grace_s`.

    Returns the job's exit status (None for a reattached job). Processes are
    found while torchrun is still their parent (orphans cannot be traced back),
    and a group is signalled only while a process seen in it is still there with
    the same start time, so a reused id is not hit.
    """
    tree = {job.pid: _Seen(job.pid, job.start_time), **_descendants(job.pid)}
    for pgid in {seen.pgid for seen in _alive(tree).values()}:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if job.ended() and not _alive(tree):
            return job.wait()
        time.sleep(0.05)
    if not job.ended():
        tree.update(_descendants(job.pid))  # ranks spawned after the first look
    for pgid in {seen.pgid for seen in _alive(tree).values()}:
        _signal_group(pgid, signal.SIGKILL)
    return job.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Proc(NamedTuple):
    ppid: int
    pgid: int
    state: str
    start_time: int


class _Seen(NamedTuple):
    """A process as first seen: its group, and its start time (None: not known, no /proc)."""

    pgid: int
    start_time: int | None


def _stat(pid: int | str) -> _Proc | None:
    """One process from ``/proc/<pid>/stat``; None when it is not there (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return _Proc(int(fields[1]), int(fields[2]), fields[0].decode(), int(fields[19]))
    except (OSError, IndexError, ValueError):
        return None  # exited meanwhile


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), while it runs; None once it is gone or a zombie."""
    proc = _stat(pid)
    return proc.start_time if proc is not None and proc.state != "Z" else None


def _process_table() -> dict[int, _Proc]:
    """Every process from /proc; empty where there is no /proc."""
    try:
        entries = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return {}
    return {int(name): proc for name in entries if (proc := _stat(name)) is not None}


def _descendants(root: int) -> dict[int, _Seen]:
    """Every process below `root`, at this moment."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    found: dict[int, _Seen] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found[pid] = _Seen(table[pid].pgid, table[pid].start_time)
        stack.extend(children.get(pid, []))
    return found


def _alive(tree: dict[int, _Seen]) -> dict[int, _Seen]:
    """The members of `tree` still running in the same group with the same start time (zombies count as gone)."""
    table = _process_table()
    if not table:  # no /proc: fall back on signal 0, which also sees zombies
        return {pid: seen for pid, seen in tree.items() if _exists(pid)}
    return {
        pid: seen for pid, seen in tree.items()
        if pid in table and table[pid].state != "Z" and table[pid].pgid == seen.pgid
        and seen.start_time in (None, table[pid].start_time)
    }  # fmt: skip


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
