"""Ctrl-C and SIGTERM on a real `fedhpc run` server (quickstart, real torchrun jobs).

Real processes because what is tested is the signal, the exit code, the console and the
jobs left (or not) on the machine. One round of one local step keeps each run to about
20 s on two shared cores; the reference (the same run, never stopped) is built once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import QUICKSTART, fedhpc_command, kill_processes_mentioning, processes_mentioning, run_fedhpc
from fedhpc.exchange import ExchangeDir
from fedhpc.run.interrupts import OnInterrupt
from fedhpc.run.ledger import Ledger

FACILITIES = ("alpha", "beta")


def _args(run_dir: Path, *extra: str) -> list[str]:
    return ["run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", "algorithm.rounds=1",
            "--set", "algorithm.local_steps=1", *extra]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    source = ExchangeDir(run_dir / "global" / "r0001")
    return {name: source.get(name) for name in source.names()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_fedhpc(*_args(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return _final(run_dir)


def _interrupted(run_dir: Path, signals: list[signal.Signals], *extra: str) -> subprocess.CompletedProcess:
    """Start the server, wait until both round-1 jobs run, send `signals` back to back; return how it ended."""
    server = subprocess.Popen(fedhpc_command(*_args(run_dir, *extra)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
            running = {e.get("facility") for e in map(json.loads, filter(None, lines)) if e["event"] == "job_running"}
            if running >= set(FACILITIES):
                break
            assert server.poll() is None, server.communicate()
            time.sleep(0.1)
        else:
            pytest.fail("the round-1 jobs never ran")
        for signum in signals:
            server.send_signal(signum)
        stdout, stderr = server.communicate(timeout=60)
    finally:
        server.kill()
    return subprocess.CompletedProcess(server.args, server.returncode, stdout, stderr)


def _no_process_left(run_dir: Path) -> list[str]:
    for _ in range(50):
        left = processes_mentioning(str(run_dir))
        if not left:
            return []
        time.sleep(0.1)
    return left


def test_sigint_stops_cleanly_and_the_same_command_resumes_to_the_same_global(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    run_dir = tmp_path / "run"
    try:
        stopped = _interrupted(run_dir, [signal.SIGINT])
        left = _no_process_left(run_dir)
    finally:
        kill_processes_mentioning(str(run_dir))
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 130, output
    assert "interrupted (SIGINT) after round 0 of 1; 2 jobs cancelled; run the same command again to resume" in output
    assert not left, f"local jobs outlived a cancelling server: {left}"
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.events("run_interrupted") and not ledger.events("run_finished")
    assert {e.facility for e in ledger.events("job_cancelled", round=1)} == set(FACILITIES)
    assert not ledger.events("launching", round=2)
    assert '<span class="badge incomplete">interrupted</span>' in (run_dir / "report.html").read_text()
    ledger.close()

    resumed = run_fedhpc(*_args(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert len(ledger.events("run_finished")) == 1
    relaunched = {(e.facility, e.detail["attempt"]) for e in ledger.events("launching", round=1)}
    assert relaunched == {(f, a) for f in FACILITIES for a in ("r0001-a0", "r0001-a1")}, "an attempt id was reused"
    assert _equal(_final(run_dir), reference)
    assert '<span class="badge finished">finished</span>' in (run_dir / "report.html").read_text()


def test_keep_leaves_the_jobs_running_and_the_resume_collects_their_updates(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    run_dir = tmp_path / "run"
    try:
        stopped = _interrupted(run_dir, [signal.SIGINT], "--on-interrupt", "keep")
        output = stopped.stdout + stopped.stderr
        assert stopped.returncode == 130, output
        assert "2 jobs left running (they will be collected on resume)" in output
        published = [run_dir / "staging" / f / "updates" / "r0001-a0" / "manifest.json" for f in FACILITIES]
        deadline = time.monotonic() + 120
        while not all(p.exists() for p in published) and time.monotonic() < deadline:
            time.sleep(0.2)
        resumed = run_fedhpc(*_args(run_dir, "--on-interrupt", "keep"))
    finally:
        kill_processes_mentioning(str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert {e.facility for e in ledger.events("job_kept", round=1)} == set(FACILITIES)
    taken_in = ledger.events("collected_after_restart", round=1) + ledger.events("reattached", round=1)
    assert {e.facility for e in taken_in} == set(FACILITIES)
    submitted = [e.facility for e in ledger.events("submitted", round=1)]
    assert sorted(submitted) == sorted(FACILITIES), "a finished job was trained a second time"
    assert _equal(_final(run_dir), reference)


def test_a_second_signal_stops_at_once_where_the_first_waits(tmp_path: Path) -> None:
    """The first SIGTERM waits for the round-0 init worker (seconds to minutes); the second kills it and exits."""
    run_dir = tmp_path / "run"
    server = subprocess.Popen(fedhpc_command(*_args(run_dir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while not processes_mentioning(str(run_dir / "logs" / "r0000")):  # the init worker runs
            assert time.monotonic() < deadline and server.poll() is None, "the init worker never started"
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.poll() is None, "the first signal did not wait for the init worker"
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=15)
        left = _no_process_left(run_dir)
    finally:
        server.kill()
        kill_processes_mentioning(str(run_dir))
    assert server.returncode == 143, stdout + stderr
    assert "interrupted (SIGTERM) after round 0 of 1; no job was running" in stdout + stderr
    assert not left, f"the init worker outlived a second signal: {left}"
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.events("run_interrupted") and ledger.completed_rounds() == []


@pytest.mark.parametrize(
    ("mode", "kinds", "keeps"),
    [
        (OnInterrupt.AUTO, {"parsl"}, True),
        (OnInterrupt.AUTO, {"parsl", "globus-compute"}, True),
        (OnInterrupt.AUTO, {"parsl", "local"}, False),
        (OnInterrupt.AUTO, {"simulated"}, False),
        (OnInterrupt.KEEP, {"local"}, True),
        (OnInterrupt.CANCEL, {"parsl"}, False),
    ],
)
def test_auto_keeps_jobs_only_when_all_of_them_hold_a_batch_allocation(
    mode: OnInterrupt, kinds: set[str], keeps: bool
) -> None:
    assert mode.keeps(kinds) is keeps


def test_a_time_limit_stops_between_rounds_with_exit_4_and_the_run_resumes(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    """A server inside its own allocation: no round starts once its seconds are spent."""
    run_dir = tmp_path / "run"
    two_rounds = ("--set", "algorithm.rounds=2")
    stopped = run_fedhpc(*_args(run_dir, *two_rounds, "--time-limit", "0"))
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 4, output
    assert "stopped at the time limit after 1 of 2 rounds; run the same command again to resume" in output
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1] and not ledger.events("launching", round=2)
    assert [e.detail["error"] for e in ledger.events("run_stopped")] == ["BudgetReached"]
    assert not ledger.events("run_finished")
    ledger.close()
    assert _equal(_final(run_dir), reference), "round 1 of a stopped run differs from an uninterrupted run's"

    resumed = run_fedhpc(*_args(run_dir, *two_rounds))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2] and len(ledger.events("run_finished")) == 1
    ledger.close()
