"""Processes the server starts die with it: Linux's parent-death signal (``PR_SET_PDEATHSIG``).

A server killed with SIGKILL runs no clean-up, so only the kernel can stop what
it started: a process that asked for a parent-death signal receives it when
its parent exits. Three pieces use it:

- `with_lifeline` wraps a command so that the child, after fork and before it
  execs the real program, asks for the signal. The wrapper is this very file
  run as a script (``python -I lifeline.py ...``): it imports nothing of
  fedhpc, and ``exec`` keeps its pid, so the launcher's ``Popen.pid`` is the
  program's. ``Popen(preexec_fn=...)`` would do the same in fewer lines, but is
  unsafe in a parent that runs threads (the server hashes and polls from
  threads): the child of a multi-threaded fork may deadlock before exec.
- The wrapper also names its own pid in ``FEDHPC_PARENT_PID`` for the program's
  children, e.g. torchrun's ranks, which call `follow_parent` at start-up: a
  parent-death signal does not survive into the children of the program, and
  torchrun starts every rank in a new session, so nothing else would stop a
  rank whose torchrun was SIGKILLed.
- `spawn` starts a child from one thread that lives as long as the process,
  because the kernel sends the signal when the *thread* that forked the child
  exits, not the process: a job submitted from a short-lived thread would
  otherwise die with that thread.

The race between fork and ``prctl`` is closed by reading the parent pid after
the call: if it is no longer the expected parent, that parent is gone already
and the process exits at once.

Off Linux there is no such signal: the calls are no-ops (one debug line) and
only an orderly stop or `cancel` ends the jobs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger(__name__)

PARENT_ENV = "FEDHPC_PARENT_PID"
"""Set by the wrapper for the program's children: the pid they must not outlive."""
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel for `sig` when this process's parent (thread) exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        logger.debug("no parent-death signal on %s: child processes may outlive their parent", sys.platform)
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(error))
        return False
    return True


def parent_is_gone(expected_parent: int) -> bool:
    """True when this process was re-parented since `expected_parent` started it (that parent has exited).

    A parent that is still alive but not ours means a program in between (a
    shell or container wrapper), which is not a reason to exit.
    """
    if os.getppid() == expected_parent:
        return False
    return not _is_running(expected_parent)


def _is_running(pid: int) -> bool:
    """True while `pid` runs; a zombie has exited already (its children were re-parented) and does not count.

    ``kill(pid, 0)`` alone answers yes for a zombie: a torchrun that was
    SIGKILLed stays one until the server polls it, and a rank that reached its
    start-up check in that window would wait forever for a dead job.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def follow_parent(sig: int = signal.SIGKILL) -> None:
    """A worker rank's start-up hook: die with the parent named in ``FEDHPC_PARENT_PID``, if one is named.

    Only the local launchers name one, so ranks started by Slurm, Parsl or
    Globus Compute are left alone. The variable is removed here so that
    anything this process starts does not take this process's parent for its own.
    """
    named = os.environ.pop(PARENT_ENV, "")
    if not named.isdigit() or int(named) == os.getpid():  # named by its own wrapper: that already set the signal
        return
    if set_parent_death_signal(sig) and parent_is_gone(int(named)):
        logger.error("the process that started this one (pid %s) has exited; stopping", named)
        raise SystemExit(1)


def with_lifeline(command: Sequence[str], sig: int | None, python: str = sys.executable) -> list[str]:
    """`command` wrapped so it gets `sig` when the calling process exits (None: no signal for it).

    Either way its children find the program's pid in ``FEDHPC_PARENT_PID``.
    Start it with `spawn`, so the thread that forks it outlives it.
    """
    return [python, "-I", os.path.abspath(__file__), str(int(sig or 0)), str(os.getpid()), *command]


_requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _serve() -> None:
    while True:
        start, result = _requests.get()
        try:
            result.set_result(start())
        except BaseException as e:  # handed to the caller, who raises it
            result.set_exception(e)


def spawn(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(*args, **kwargs)``, forked from a daemon thread that lives until the process exits."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_serve, name="fedhpc-spawner", daemon=True)
            _spawner.start()
    result: Future[subprocess.Popen[bytes]] = Future()
    _requests.put((lambda: subprocess.Popen(*args, **kwargs), result))
    return result.result()


def _exec_with_lifeline(argv: list[str]) -> None:
    """The wrapper: ``lifeline.py SIGNAL PARENT_PID PROGRAM ARGS...``."""
    sig, parent, command = int(argv[0]), int(argv[1]), argv[2:]
    if sig and set_parent_death_signal(sig) and parent_is_gone(parent):
        sys.exit(f"lifeline: the server (pid {parent}) exited before {command[0]} started")
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.exit(f"lifeline: cannot run {command[0]}: {e}")


if __name__ == "__main__":
    _exec_with_lifeline(sys.argv[1:])
