"""Shared fixtures: the quickstart experiment, and running the real `fedhpc` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedhpc.facility.base import JobHandle, JobStatus, Launcher

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart" / "experiment.yaml"
FAULTS_DIR = Path(__file__).resolve().parent / "faults"


def fedhpc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedhpc", *args]


def run_fedhpc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(fedhpc_command(*args), capture_output=True, text=True, timeout=timeout)


def processes_mentioning(text: str) -> list[str]:
    """``"pid: command line"`` of every other process whose command line mentions `text`."""
    found = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid_dir.name) != os.getpid():
            found.append(f"{pid_dir.name}: {cmdline}")
    return found


def kill_processes_mentioning(text: str) -> None:
    """Kill every process whose command line mentions `text` (orphaned workers of a killed server)."""
    for process in processes_mentioning(text):
        try:
            os.kill(int(process.split(":", 1)[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_events(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl events so far (none before the server has written any)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def sigkill_server_in_round(args: list[str] | tuple[str, ...], run_dir: Path, round: int, timeout: float) -> None:
    """Start `fedhpc *args`, SIGKILL it once `round`'s jobs are submitted, and kill the jobs it orphaned."""
    server = subprocess.Popen(fedhpc_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while not any(e["event"] == "submitted" and e.get("round") == round for e in run_events(run_dir)):
            assert server.poll() is None, server.stderr.read().decode()  # type: ignore[union-attr]
            assert time.time() < deadline, f"round {round} never started"
            time.sleep(0.2)
        server.send_signal(signal.SIGKILL)
        server.wait()
    finally:
        kill_processes_mentioning(str(run_dir))


def wait_finished(launcher: Launcher, handle: JobHandle, timeout: float = 30.0) -> JobStatus:
    """Poll until the job ends; one still running after `timeout` is cancelled and fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = launcher.poll(handle)
        if status.state.finished:
            return status
        time.sleep(0.05)
    launcher.cancel(handle)
    raise AssertionError(f"{handle.job_id} still running after {timeout} s")


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
