"""Partial participation and round deadlines, end to end: real server, real workers, one rank each.

A facility is made slow with the `slow` fault of tests/faults (it sleeps before training), and
`round_deadline=1` makes a round close as soon as the quorum is in, so these tests depend on the
order in which jobs finish, not on how fast this machine is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import FAULTS_DIR, QUICKSTART, kill_processes_mentioning, run_fedhpc
from fedhpc.config import load_experiment
from fedhpc.run.ledger import Ledger
from fedhpc.run.scheduling import SyncPolicy

DATA = QUICKSTART.parent / "data"


def _facility(name: str, data: str, slow_seconds: float | None = None, slow_rounds: str = "") -> dict:
    env = {}
    if slow_seconds is not None:
        env = {
            "PYTHONPATH": str(FAULTS_DIR),
            "FEDHPC_TEST_FAULT": "slow",
            "FEDHPC_TEST_SLOW_SECONDS": str(slow_seconds),
            "FEDHPC_TEST_SLOW_ROUNDS": slow_rounds,
        }
    return {"name": name, "data": str(DATA / data), "launcher": {"kind": "local", "nprocs": 1, "env": env}}


def _overrides(run_dir: Path, facilities: list[dict], *settings: str) -> list[str]:
    args = ["--set", f"run_dir={run_dir}", "--set", "algorithm.local_steps=2", "--set", f"facilities={json.dumps(facilities)}"]
    for setting in settings:
        args += ["--set", setting]
    return args


def _by_round(ledger: Ledger, event: str) -> dict[int, list[str]]:
    rounds: dict[int, list[str]] = {}
    for e in ledger.events(event):
        rounds.setdefault(e.round, []).append(e.facility)
    return {r: sorted(f) for r, f in rounds.items()}


def test_only_the_sampled_facilities_are_asked_to_train(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    facilities = [_facility("alpha", "alpha.jsonl"), _facility("beta", "beta.jsonl"), _facility("gamma", "alpha.jsonl")]
    args = _overrides(run_dir, facilities, "algorithm.rounds=2", "algorithm.participation=0.34")
    result = run_fedhpc("run", str(QUICKSTART), *args)
    assert result.returncode == 0, result.stdout + result.stderr

    experiment = load_experiment(QUICKSTART, [a for a in args if a != "--set"])
    policy = SyncPolicy(experiment.algorithm, ["alpha", "beta", "gamma"])
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    started = {e.round: e.detail["participants"] for e in ledger.events("round_started")}
    submitted = _by_round(ledger, "submitted")
    for round in (1, 2):
        assert len(policy.participants(round)) == 2  # ceil(0.34 · 3)
        assert started[round] == policy.participants(round)
        assert submitted[round] == sorted(policy.participants(round))
        assert _by_round(ledger, "accepted")[round] == sorted(policy.participants(round))


def test_a_late_job_is_cancelled_and_the_round_aggregates_without_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    facilities = [_facility("alpha", "alpha.jsonl"), _facility("beta", "beta.jsonl", slow_seconds=120)]
    args = _overrides(run_dir, facilities, "algorithm.rounds=1", "algorithm.round_deadline=1",
                      "algorithm.late_updates=drop")
    started = time.time()
    try:
        result = run_fedhpc("run", str(QUICKSTART), *args)
    finally:
        kill_processes_mentioning(str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.time() - started < 100, "the server waited for the slow job"

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1]
    (aggregated,) = ledger.events("aggregated", round=1)
    assert aggregated.detail["facilities"] == ["alpha"]
    (dropped,) = ledger.events("late_dropped")
    assert (dropped.round, dropped.facility) == (1, "beta")
    assert "round_deadline" in dropped.detail["reason"]
    assert not [e for e in ledger.events("job_finished") if e.facility == "beta"]
    (accepted,) = ledger.events("accepted", round=1)
    assert accepted.detail["staleness"] == 0


def test_a_late_update_counts_in_the_next_round_as_stale(tmp_path: Path) -> None:
    """beta is late in round 1 and delivers in round 2 (alpha, slow in round 2, is late there instead)."""
    run_dir = tmp_path / "run"
    facilities = [
        _facility("alpha", "alpha.jsonl", slow_seconds=120, slow_rounds="2"),
        _facility("beta", "beta.jsonl", slow_seconds=8, slow_rounds="1"),
    ]
    args = _overrides(run_dir, facilities, "algorithm.rounds=3", "algorithm.round_deadline=1",
                      "algorithm.late_updates=next_round")
    try:
        result = run_fedhpc("run", str(QUICKSTART), *args)
    finally:
        kill_processes_mentioning(str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2, 3]
    submitted = _by_round(ledger, "submitted")
    assert submitted == {1: ["alpha", "beta"], 2: ["alpha"], 3: ["beta"]}, "a facility still training is not relaunched"
    assert [(e.round, e.facility) for e in ledger.events("late_carried")] == [(1, "beta"), (2, "alpha")]
    assert ledger.events("aggregated", round=1)[0].detail["facilities"] == ["alpha"]
    assert ledger.events("aggregated", round=2)[0].detail["facilities"] == ["beta"]
    (stale,) = ledger.events("accepted", round=2)
    assert stale.facility == "beta"
    assert stale.detail["staleness"] == 1
    (fresh,) = ledger.events("accepted", round=3)
    assert (fresh.facility, fresh.detail["staleness"]) == ("beta", 0)
    # alpha's round-2 job was still running when the last round closed: there is no next round for it
    assert [(e.round, e.facility) for e in ledger.events("late_dropped")] == [(2, "alpha")]
