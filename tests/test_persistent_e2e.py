"""`mode: persistent` end to end: the quickstart with real torchrun workers that live across rounds.

What must hold: one worker job per facility for the whole run, the base model
loaded once per facility, the same final global as per-round jobs (nothing
leaks between tasks), no worker left behind; and a worker that dies (SIGKILL),
hangs (SIGSTOP: its heartbeat stops) or runs out of walltime is replaced
without losing or redoing a completed round.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import (
    FAULTS_DIR,
    QUICKSTART,
    fedhpc_command,
    kill_processes_mentioning,
    processes_mentioning,
    run_fedhpc,
)
from fedhpc.exchange import ExchangeDir
from fedhpc.run.ledger import Ledger

FAST = ["--set", "algorithm.local_steps=4"]


def persistent(run_dir: Path, rounds: int, **settings: float) -> list[str]:
    args = ["run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", f"algorithm.rounds={rounds}", *FAST]
    for index in (0, 1):
        args += ["--set", f"facilities.{index}.mode=persistent"]
        for key, value in settings.items():
            args += ["--set", f"facilities.{index}.persistent.{key}={value}"]
    return args


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def same_globals(a: Path, b: Path) -> bool:
    first, second = ExchangeDir(a), ExchangeDir(b)
    return first.names() == second.names() and all(torch.equal(first.get(n), second.get(n)) for n in first.names())


def assert_every_round_once(run_dir: Path, rounds: int, facilities: set[str]) -> Ledger:
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == list(range(rounds + 1))
    assert sorted(e.round for e in ledger.events("aggregated")) == list(range(rounds + 1)), "a round redone or lost"
    for round in range(1, rounds + 1):
        accepted = [e.facility for e in ledger.events("accepted", round=round)]
        assert sorted(accepted) == sorted(facilities), (round, accepted)
    return ledger


def wait_for(run_dir: Path, server: subprocess.Popen, event: str, round: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["event"] == event and e.get("round") == round for e in events(run_dir)):
            return
        if server.poll() is not None:
            pytest.fail(f"the server ended before {event} of round {round}: {server.stderr.read().decode()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"no {event} of round {round} within {timeout} s")


def worker_events(ledger: Ledger, facility: str) -> list[tuple[str, dict]]:
    names = ("worker_started", "worker_ready", "worker_lost", "worker_stopped")
    return [(e.event, e.detail) for e in ledger.events() if e.event in names and e.facility == facility]


def test_persistent_workers_train_every_round_once_loaded_and_match_per_round_jobs(tmp_path: Path) -> None:
    per_round, kept = tmp_path / "per-round", tmp_path / "persistent"
    baseline = run_fedhpc("run", str(QUICKSTART), "--set", f"run_dir={per_round}", "--set", "algorithm.rounds=2", *FAST)
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    result = run_fedhpc(*persistent(kept, rounds=2))

    assert result.returncode == 0, result.stderr[-3000:]
    ledger = assert_every_round_once(kept, 2, {"alpha", "beta"})
    for facility in ("alpha", "beta"):
        story = [name for name, _ in worker_events(ledger, facility)]
        assert story == ["worker_started", "worker_ready", "worker_stopped"], story
        (log,) = (kept / "logs" / "workers").glob(f"{facility}-w*.err")
        assert log.read_text().count("base model loaded in") == 1
    jobs = {(e.round, e.facility): e.detail["job_id"] for e in ledger.events("submitted")}
    assert len({job_id.split(":")[0] for job_id in jobs.values()}) == 2, jobs  # one worker job per facility
    for round in (1, 2):
        assert same_globals(per_round / "global" / f"r{round:04d}", kept / "global" / f"r{round:04d}"), round
    assert processes_mentioning(str(kept)) == [], "a worker outlived the run"


def _kill_rank_0_after_round_1(tmp_path: Path, sig: signal.Signals, timeout: float) -> tuple[Path, float, Ledger]:
    """Run 3 rounds; after round 1 commits, send `sig` to beta's rank 0. Return the run, when, and the ledger."""
    run_dir = tmp_path / "run"
    args = persistent(run_dir, rounds=3, heartbeat_interval=0.5, heartbeat_timeout=timeout)
    server = subprocess.Popen(fedhpc_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = None
    try:
        wait_for(run_dir, server, "round_complete", 1)
        heartbeat = json.loads((run_dir / "staging" / "beta" / "workers" / "w0001" / "heartbeat.json").read_text())
        victim = heartbeat["pid"]
        os.kill(victim, sig)
        signalled = time.time()
        _, stderr = server.communicate(timeout=240)
        assert server.returncode == 0, stderr.decode()[-3000:]
    finally:
        if victim is not None:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if server.poll() is None:
            server.kill()
        kill_processes_mentioning(str(run_dir))
    return run_dir, signalled, assert_every_round_once(run_dir, 3, {"alpha", "beta"})


def test_a_sigkilled_worker_is_replaced_and_no_round_is_lost_or_redone(tmp_path: Path) -> None:
    timeout = 3.0
    run_dir, killed, ledger = _kill_rank_0_after_round_1(tmp_path, signal.SIGKILL, timeout)

    story = worker_events(ledger, "beta")
    assert [name for name, _ in story][:4] == ["worker_started", "worker_ready", "worker_lost", "worker_started"]
    assert story[-1][0] == "worker_stopped"
    (lost,) = ledger.events("worker_lost")
    assert lost.ts - killed < timeout + 3.0, "not detected within heartbeat_timeout"
    assert [name for name, _ in worker_events(ledger, "alpha")] == ["worker_started", "worker_ready", "worker_stopped"]
    beta_jobs = [e for e in ledger.events("job_finished") if e.facility == "beta"]
    assert [e.round for e in beta_jobs] == [1, 2, 3] and all(e.detail["state"] == "done" for e in beta_jobs)
    assert processes_mentioning(str(run_dir)) == []


# Slow (about 40 s); the fast twin is test_facility_persistent's heartbeat test (a stalled heartbeat
# loses the pilot and its task moves to a new one).
@pytest.mark.slow
def test_a_hung_worker_is_caught_by_the_heartbeat_timeout_and_replaced(tmp_path: Path) -> None:
    timeout = 3.0
    _, stopped, ledger = _kill_rank_0_after_round_1(tmp_path, signal.SIGSTOP, timeout)

    (lost,) = ledger.events("worker_lost")
    assert lost.facility == "beta" and "heartbeat has not changed" in lost.detail["reason"]
    assert timeout <= lost.detail["seconds_since_heartbeat"] < timeout + 3.0
    assert timeout - 1.0 <= lost.ts - stopped < timeout + 4.0
    assert [e.detail["worker"] for e in ledger.events("worker_started") if e.facility == "beta"] == ["w0001", "w0002"]


# Slow (about 50 s, a 30 s walltime by design); fast twins: test_facility_local's walltime test (the
# job is stopped and failed with the reason) and test_facility_persistent's (a failed pilot's task moves on).
@pytest.mark.slow
def test_a_worker_out_of_walltime_is_replaced_and_the_run_finishes(tmp_path: Path) -> None:
    """alpha alone, with a 30 s walltime; its first worker hangs in round 2 until the walltime ends it.

    (Only worker w0001 hangs, so the test does not depend on how fast this machine starts a worker.)
    """
    run_dir = tmp_path / "run"
    hang = {"PYTHONPATH": str(FAULTS_DIR), "FEDHPC_TEST_FAULT": "slow", "FEDHPC_TEST_SLOW_SECONDS": "600",
            "FEDHPC_TEST_SLOW_ROUNDS": "2", "FEDHPC_TEST_SLOW_WORKERS": "w0001"}
    facility = {
        "name": "alpha",
        "data": str(QUICKSTART.parent / "data" / "alpha.jsonl"),
        "mode": "persistent",
        "launcher": {"kind": "local", "walltime": 30, "env": hang},
    }
    result = run_fedhpc("run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", "algorithm.rounds=3",
                        "--set", "algorithm.local_steps=2", "--set", f"facilities={json.dumps([facility])}")

    assert result.returncode == 0, result.stderr[-3000:]
    ledger = assert_every_round_once(run_dir, 3, {"alpha"})
    story = worker_events(ledger, "alpha")
    assert [name for name, _ in story] == [
        "worker_started", "worker_ready", "worker_lost", "worker_started", "worker_ready", "worker_stopped"
    ], story
    assert "walltime exceeded (30 s)" in story[2][1]["reason"]
    assert [e.detail["state"] for e in ledger.events("job_finished")] == ["done"] * 3  # round 2 retried, not failed


def test_a_resumed_server_takes_new_workers_and_its_predecessors_orphans_stop_themselves(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = persistent(run_dir, rounds=3)
    server = subprocess.Popen(fedhpc_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(run_dir, server, "submitted", 2)
        server.send_signal(signal.SIGKILL)  # no close(): its workers are orphans now
        server.wait()
        first_inboxes = [str(run_dir / "staging" / f / "workers" / "w0001") for f in ("alpha", "beta")]
        assert all(processes_mentioning(inbox) for inbox in first_inboxes)

        result = run_fedhpc(*args)

        assert result.returncode == 0, result.stderr[-3000:]
        deadline = time.time() + 30
        while any(processes_mentioning(inbox) for inbox in first_inboxes):
            assert time.time() < deadline, "an orphaned worker ignored its stop file"
            time.sleep(0.2)
    finally:
        if server.poll() is None:
            server.kill()
        kill_processes_mentioning(str(run_dir))
    ledger = assert_every_round_once(run_dir, 3, {"alpha", "beta"})
    for facility in ("alpha", "beta"):
        started = [e.detail["worker"] for e in ledger.events("worker_started") if e.facility == facility]
        assert started == ["w0001", "w0002"], started
        assert (run_dir / "staging" / facility / "workers" / "w0001" / "stop").exists()
