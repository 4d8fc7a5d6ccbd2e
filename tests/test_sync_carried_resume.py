"""A late job carried into the next round survives a server restart (synchronous rounds, virtual clock)."""

from __future__ import annotations

from pathlib import Path

import torch

from fedhpc.run.ledger import Ledger
from test_async_e2e import run, run_killed_after, scenario, tensors


def test_a_carried_late_job_is_picked_up_after_a_restart_and_counts_next_round(tmp_path: Path, monkeypatch) -> None:
    algorithm = {"name": "fedavg", "rounds": 3, "round_deadline": 10, "late_updates": "next_round"}
    speeds = {"fast": 1.0, "slow": 7.0}  # a job: 3 s at fast, 15 s at slow, so slow misses round 1's deadline
    straight = run(scenario(tmp_path / "straight", algorithm, speeds))

    path = scenario(tmp_path / "killed", algorithm, speeds)
    run_killed_after(path, 1, monkeypatch)
    resumed = run(path)

    ledger = Ledger(resumed / "ledger.sqlite")
    assert [e.facility for e in ledger.events("late_carried")][:1] == ["slow"]
    assert [e.facility for e in ledger.events("reattached")] == ["slow"]
    late = [e for e in ledger.events("accepted", round=2) if e.facility == "slow"]
    assert late and late[0].detail["staleness"] == 1
    final_a, final_b = tensors(straight / "global" / "r0003"), tensors(resumed / "global" / "r0003")
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)
