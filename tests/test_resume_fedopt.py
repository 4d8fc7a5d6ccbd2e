"""A FedAdam run stopped after round 2 and resumed ends with the same global as one that never stopped.

The server optimiser's moments are state the server must carry across a restart: without
`server_state/`, the resumed round 3 would restart FedAdam from zero moments and diverge.
"""

from __future__ import annotations

from pathlib import Path

import torch

import pytest

from conftest import QUICKSTART, run_fedhpc
from fedhpc.exchange import ExchangeDir
from fedhpc.run.ledger import Ledger
from test_async_e2e import run, scenario


def fedadam(run_dir: Path, rounds: int) -> list[str]:
    return [
        "run", str(QUICKSTART), "--set", "algorithm.name=fedadam", f"--set=algorithm.rounds={rounds}",
        "--set", "algorithm.local_steps=2", "--set", f"run_dir={run_dir}",
    ]  # fmt: skip


def test_resumed_fedadam_run_is_bit_identical_to_an_uninterrupted_one(tmp_path: Path) -> None:
    """In-process servers with simulated facilities: the server's side of a restart, in seconds."""
    algorithm, speeds = {"name": "fedadam", "rounds": 1}, {"alpha": 1.0, "beta": 2.0}
    resumed = scenario(tmp_path / "A", algorithm, speeds)
    run(resumed)
    run(resumed, "algorithm.rounds=2")
    straight = run(scenario(tmp_path / "B", {**algorithm, "rounds": 2}, speeds))
    assert_resumed_equals_straight(tmp_path / "A" / "run", straight)


@pytest.mark.slow  # the same server path as the test above, through `fedhpc run` and real torchrun workers
def test_resumed_fedadam_run_with_real_workers_is_bit_identical_to_an_uninterrupted_one(tmp_path: Path) -> None:
    resumed, straight = tmp_path / "A", tmp_path / "B"
    for args in (fedadam(resumed, 1), fedadam(resumed, 2), fedadam(straight, 2)):
        result = run_fedhpc(*args)
        assert result.returncode == 0, result.stdout + result.stderr
    assert_resumed_equals_straight(resumed, straight)


def assert_resumed_equals_straight(resumed: Path, straight: Path) -> None:
    starts = Ledger(resumed / "ledger.sqlite").events("run_started")
    assert [e.detail["resumed_from"] for e in starts] == [None, 1]
    a, b = ExchangeDir(resumed / "global" / "r0002"), ExchangeDir(straight / "global" / "r0002")
    assert a.names() == b.names()
    assert all(torch.equal(a.get(name), b.get(name)) for name in a.names())
    assert not torch.equal(a.get(a.names()[0]), ExchangeDir(resumed / "global" / "r0001").get(a.names()[0]))

    # The state of the latest round only, with both moments of every global tensor, in fp32.
    for run_dir in (resumed, straight):
        assert sorted(p.name for p in (run_dir / "server_state").iterdir()) == ["r0002"]
        state = ExchangeDir(run_dir / "server_state" / "r0002")
        state.verify()
        assert state.manifest.metrics == {"content": "server_state", "algorithm": "fedadam"}
        assert sorted(state.names()) == sorted(f"{n}.{k}" for n in a.names() for k in "mv")
        assert {entry.dtype for entry in state.manifest.tensors.values()} == {"float32"}
    aggregated = Ledger(straight / "ledger.sqlite").events("aggregated")
    assert [e.detail.get("algorithm") for e in aggregated if e.round] == ["fedadam"] * 2
