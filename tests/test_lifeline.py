"""The start-up check of a rank whose torchrun is gone: it must see a dead parent, reaped or still a zombie."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from fedhpc.lifeline import parent_is_gone

# The "torchrun": starts one child and exits at once, as a SIGKILLed torchrun does.
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys
    subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
    """
)

# The "rank": waits until it has been re-parented and told to go on, then writes what the start-up check says.
CHILD = textwrap.dedent(
    """
    import os, pathlib, sys, time
    from fedhpc.lifeline import parent_is_gone
    parent, here = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    while os.getppid() == parent or not (here / "go").exists():
        time.sleep(0.02)
    (here / "answer").write_text(str(parent_is_gone(parent)))
    """
)


def state(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("reaped", [False, True], ids=["zombie", "reaped"])
def test_an_exited_parent_counts_as_gone(tmp_path, reaped):
    # A SIGKILLed torchrun stays a zombie until the server polls it; a rank that checks in that window must not wait.
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(tmp_path)])
    deadline = time.monotonic() + 30
    while state(parent.pid) != b"Z":
        assert time.monotonic() < deadline, "the parent never exited"
        time.sleep(0.02)
    if reaped:
        parent.wait()
    (tmp_path / "go").touch()
    answer = tmp_path / "answer"
    while not answer.exists():
        assert time.monotonic() < deadline + 60, "the child never answered"
        time.sleep(0.05)
    parent.wait()
    assert answer.read_text() == "True"


def test_a_named_parent_that_still_runs_is_not_gone():
    # A program between a rank and the named parent (a shell, a container wrapper) is no reason to exit.
    assert os.getppid() != os.getpid()
    assert parent_is_gone(os.getpid()) is False
