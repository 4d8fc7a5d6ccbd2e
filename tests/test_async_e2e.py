"""FedAsync, FedBuff and FedCompass end to end: the real orchestrator, worker and exchange, on a virtual clock.

Facilities use the `simulated` launcher, so a job's duration is drawn from its
configuration and name: the runs are deterministic and take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from conftest import ROOT
from fedhpc.config import StalenessConfig, load_experiment
from fedhpc.aggregate.staleness import staleness_weight
from fedhpc.exchange import ExchangeDir
from fedhpc.report.progress import ProgressView
from fedhpc.clock import VirtualClock
from fedhpc.run.ledger import Ledger
from fedhpc.run.orchestrator import Orchestrator
from fedhpc.simulate.launcher import simulated_launchers

QUICKSTART_DATA = ROOT / "examples" / "quickstart" / "data"


def scenario(tmp_path: Path, algorithm: dict, speeds: dict[str, float], queue: dict[str, object] | None = None) -> Path:
    """An experiment file: one simulated facility per entry of `speeds` (virtual seconds per step)."""
    document = {
        "name": "async-test",
        "run_dir": str(tmp_path / "run"),
        "model": {"source": "tiny-llama", "tiny": {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64},
                  "peft": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"seq_len": 48},
        "algorithm": {"local_steps": 2, "lr": 0.01, "batch_size": 2, "round_timeout": 3600, **algorithm},
        "facilities": [
            {
                "name": name,
                "data": str(QUICKSTART_DATA / ("alpha.jsonl" if index % 2 == 0 else "beta.jsonl")),
                "launcher": {"kind": "simulated", "seconds_per_step": speed, "startup": 1.0,
                             "queue_wait": (queue or {}).get(name, 0.0), "seed": index},
            }
            for index, (name, speed) in enumerate(speeds.items())
        ],
    }
    path = tmp_path / "experiment.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def run(path: Path, *overrides: str) -> Path:
    experiment = load_experiment(path, list(overrides))
    names = [f.name for f in experiment.facilities]
    with ProgressView(experiment.name, experiment.algorithm.rounds, names, console=Console(quiet=True)) as view:
        clock = VirtualClock(start=0.0)
        launchers = simulated_launchers(experiment.facilities, clock)
        orchestrator = Orchestrator(experiment, view, clock, launchers=launchers)
        try:
            orchestrator.run()
        finally:
            orchestrator.close()
    return experiment.resolved_run_dir()


def tensors(path: Path) -> dict[str, torch.Tensor]:
    source = ExchangeDir(path)
    return {name: source.get(name) for name in source.names()}


def test_fedasync_applies_each_update_on_arrival_with_its_staleness_weight(tmp_path: Path) -> None:
    staleness = {"function": "polynomial", "a": 0.5}
    path = scenario(tmp_path, {"name": "fedasync", "rounds": 8, "alpha": 0.5, "staleness": staleness},
                    {"fast": 1.0, "slow": 7.0})
    run_dir = run(path)
    ledger = Ledger(run_dir / "ledger.sqlite")
    aggregated = [e for e in ledger.events("aggregated") if e.round]
    assert [e.round for e in aggregated] == list(range(1, 9))
    assert all(e.detail["num_updates"] == 1 for e in aggregated)
    stale = [e for e in aggregated if max(e.detail["staleness"].values()) > 0]
    assert stale, "the slow facility's updates arrive after the fast one has advanced the global"

    # global_v = (1 - α·s(τ))·global_{v-1} + α·s(τ)·local, with the local model as the facility published it
    for event in stale:
        (attempt, tau), = event.detail["staleness"].items()
        (facility,) = event.detail["facilities"]
        local = tensors(run_dir / "staging" / facility / "updates" / attempt)
        previous, current = tensors(run_dir / "global" / f"r{event.round - 1:04d}"), tensors(
            run_dir / "global" / f"r{event.round:04d}")
        weight = 0.5 * staleness_weight(StalenessConfig(**staleness), tau)
        assert weight < 0.5
        for name in current:
            expected = (1 - weight) * previous[name] + weight * local[name].float()
            torch.testing.assert_close(current[name], expected, rtol=0, atol=1e-6)

    # a facility whose update was applied trains again at once, from the new global
    accepted = ledger.events("accepted")
    submitted = ledger.events("submitted")
    for event in accepted[:-2]:
        again = [s for s in submitted if s.facility == event.facility and s.ts == event.ts]
        assert again, f"{event.facility} was not relaunched when its update arrived"


def test_update_beyond_max_staleness_is_rejected_with_its_reason(tmp_path: Path) -> None:
    path = scenario(tmp_path, {"name": "fedasync", "rounds": 8, "max_staleness": 1},
                    {"fast": 1.0, "slow": 5.0})  # a job takes 3 s at fast, 11 s at slow
    run_dir = run(path)
    ledger = Ledger(run_dir / "ledger.sqlite")
    rejected = [e for e in ledger.events("rejected") if e.facility == "slow"]
    assert rejected and all(e.detail["reason"] == "stale" for e in rejected)
    assert "algorithm.max_staleness is 1" in rejected[0].detail["message"]
    applied = [f for e in ledger.events("aggregated") if e.round for f in e.detail["facilities"]]
    assert "slow" not in applied and applied.count("fast") == 8


def test_fedbuff_applies_k_buffered_updates_per_global(tmp_path: Path) -> None:
    path = scenario(tmp_path, {"name": "fedbuff", "rounds": 3, "buffer_size": 2},
                    {"a": 1.0, "b": 1.5, "c": 4.0})
    run_dir = run(path)
    ledger = Ledger(run_dir / "ledger.sqlite")
    aggregated = [e for e in ledger.events("aggregated") if e.round]
    assert [e.detail["num_updates"] for e in aggregated] == [2, 2, 2]
    # no facility waits for the buffer: each is relaunched when its own update arrives
    for event in ledger.events("accepted")[:-1]:
        assert any(s.facility == event.facility and s.ts == event.ts for s in ledger.events("submitted"))


def test_fedcompass_assigns_steps_by_speed_and_aggregates_arrival_groups(tmp_path: Path) -> None:
    compass = {"min_steps": 2, "max_steps": 8}
    path = scenario(tmp_path, {"name": "fedcompass", "rounds": 10, "compass": compass},
                    {"fast": 1.0, "medium": 2.0, "slow": 3.5})
    run_dir = run(path)
    ledger = Ledger(run_dir / "ledger.sqlite")
    steps = {}
    for event in ledger.events("submitted"):
        steps.setdefault(event.facility, []).append(event.detail["local_steps"])
    assert all(2 <= s <= 8 for values in steps.values() for s in values)
    assert len({s for values in steps.values() for s in values}) > 1, "steps are assigned, not all max_steps"
    grouped = [e for e in ledger.events("aggregated") if e.round and e.detail.get("group") is not None]
    assert any(e.detail["num_updates"] >= 2 for e in grouped), "some arrival group aggregates several facilities"
    # the worker obeys the assignment: each accepted update trained the steps it was given
    given = {e.detail["attempt"]: e.detail["local_steps"] for e in ledger.events("submitted")}
    for event in ledger.events("accepted"):
        assert event.detail["local_steps"] == given[event.detail["attempt"]]


class Killed(BaseException):
    """Stands in for SIGKILL right after a commit (BaseException: no handler in the server catches it)."""


def run_killed_after(path: Path, version: int, monkeypatch) -> None:
    """Run until the ledger has committed `version`, then die there."""
    original = Ledger.complete_round

    def complete_then_die(self, round, *args, **kwargs):
        original(self, round, *args, **kwargs)
        if round == version:
            raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr(Ledger, "complete_round", complete_then_die)
        with pytest.raises(Killed):
            run(path)


def test_fedcompass_killed_after_version_k_resumes_to_the_same_final_global(tmp_path: Path, monkeypatch) -> None:
    algorithm = {"name": "fedcompass", "rounds": 9, "compass": {"min_steps": 1, "max_steps": 6}}
    speeds = {"fast": 1.0, "medium": 2.5, "slow": 4.0}
    straight = run(scenario(tmp_path / "straight", algorithm, speeds, {"slow": {"uniform": [0, 20]}}))

    path = scenario(tmp_path / "killed", algorithm, speeds, {"slow": {"uniform": [0, 20]}})
    run_killed_after(path, 4, monkeypatch)
    resumed = run(path)

    ledger = Ledger(resumed / "ledger.sqlite")
    starts = ledger.events("run_started")
    assert [e.detail["resumed_from"] for e in starts] == [None, 4]
    state = json.loads(ledger.get_meta("async_state"))
    assert state["version"] == 9
    assert ledger.events("reattached"), "the jobs in flight at the kill are picked up, not forgotten"
    final_a, final_b = tensors(straight / "global" / "r0009"), tensors(resumed / "global" / "r0009")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)
    group_a = [e.detail.get("facilities") for e in Ledger(straight / "ledger.sqlite").events("aggregated")]
    group_b = [e.detail.get("facilities") for e in ledger.events("aggregated")]
    assert group_a == group_b
