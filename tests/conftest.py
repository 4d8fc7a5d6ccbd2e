"""Shared fixtures: the quickstart experiment, and running the real `fedhpc` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart" / "experiment.yaml"
FAULTS_DIR = Path(__file__).resolve().parent / "faults"


def fedhpc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedhpc", *args]


def run_fedhpc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(fedhpc_command(*args), capture_output=True, text=True, timeout=timeout)


def kill_processes_mentioning(text: str) -> None:
    """Kill every process whose command line mentions `text` (orphaned workers of a killed server)."""
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid_dir.name) != os.getpid():
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def quickstart() -> Path:
    return QUICKSTART


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding two facility datasets, like a user's project; the experiment files go in it."""
    (tmp_path / "data").mkdir()
    for name in ("alpha", "beta"):
        (tmp_path / "data" / f"{name}.jsonl").write_text('{"input": "H2O", "output": "water"}\n')
    return tmp_path
