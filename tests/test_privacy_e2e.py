"""Differential privacy through the whole server: sampling, ε per round, the budget stop, resume, what users see.

The server's side runs in-process with simulated facilities (seconds); one real `fedhpc run` of
examples/privacy (torchrun workers, about a minute) checks what a user reads: the console's round
lines, the ledger, metrics.jsonl, `fedhpc status` and the report, then the budget stop's exit code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, run_events, run_fedhpc
from fedhpc.config import AlgorithmConfig
from fedhpc.errors import ExitCode, PrivacyBudgetReached, exit_code
from fedhpc.exchange import ExchangeDir
from fedhpc.privacy import epsilon_after
from fedhpc.run.ledger import Ledger
from fedhpc.run.scheduling import PoissonSyncPolicy, sampling_key
from fedhpc.run.status import run_status
from test_async_e2e import run, scenario

EXAMPLE = ROOT / "examples" / "privacy" / "experiment.yaml"


def private_scenario(tmp_path: Path, algorithm: dict, privacy: dict, facilities: int = 2) -> Path:
    """`test_async_e2e.scenario` (simulated facilities, a tiny model) with `privacy` added."""
    speeds = {f"f{i}": 1.0 + i for i in range(facilities)}
    path = scenario(tmp_path, {"weighting": "equal", **algorithm}, speeds)
    document = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**document, "privacy": privacy}))
    return path


# --- the sampler the accountant assumes -----------------------------------------------------------


def test_poisson_sampling_is_independent_per_facility_secret_and_the_same_for_a_resumed_round() -> None:
    names = [f"f{i}" for i in range(8)]
    algorithm = AlgorithmConfig(participation=0.25, min_facilities=3)
    key = sampling_key(None, None)
    policy = PoissonSyncPolicy(algorithm, names, key)
    draws = [policy.participants(r) for r in range(1, 401)]
    assert draws == [PoissonSyncPolicy(algorithm, names, bytes.fromhex(key.hex())).participants(r)
                     for r in range(1, 401)], "a resumed server (its key from the ledger) asks the same facilities"
    asked = sum(len(d) for d in draws)
    assert abs(asked / (400 * 8) - 0.25) < 0.04  # 3,200 Bernoulli(0.25) draws: 5 standard deviations
    sizes = {len(d) for d in draws}
    assert 0 in sizes and max(sizes) > 3, "the sample's size varies, and is not topped up to min_facilities"
    other = PoissonSyncPolicy(AlgorithmConfig(participation=0.25, seed=7), names, sampling_key(None, None))
    assert [other.participants(r) for r in range(1, 401)] != draws, "drawn from the secret key"
    same_seed = AlgorithmConfig(participation=0.25, min_facilities=3, seed=99)
    assert [PoissonSyncPolicy(same_seed, names, key).participants(r) for r in range(1, 401)] == draws, (
        "algorithm.seed, which is public, does not decide the sample")
    assert sampling_key(None, 5) == sampling_key(None, 5) != sampling_key(None, 6)

    empty = next(r for r, d in enumerate(draws, 1) if not d)
    policy.assignments(empty)
    assert policy.quorum_met(0), "a round that asked no one still commits (a noise-only step)"
    full = next(r for r, d in enumerate(draws, 1) if len(d) >= 3)
    policy.assignments(full)
    assert not policy.quorum_met(2) and policy.quorum_met(3)
    small = next(r for r, d in enumerate(draws, 1) if len(d) == 1)
    policy.assignments(small)
    assert policy.quorum_met(1) and not policy.quorum_met(0)


# --- the budget -----------------------------------------------------------------------------------


def test_the_run_stops_before_the_round_that_would_pass_target_epsilon_and_a_resume_does_not_pass_it(
    tmp_path: Path,
) -> None:
    spent = [epsilon_after(2.0, 1.0, r, 1e-5) for r in (1, 2)]
    target = sum(spent) / 2  # round 1 fits, round 2 would not
    path = private_scenario(tmp_path, {"rounds": 3}, {"noise_multiplier": 2.0, "target_epsilon": target})
    for _ in range(2):  # the first server stops after round 1; the same command again stops at once
        with pytest.raises(PrivacyBudgetReached) as caught:
            run(path)
        assert exit_code(caught.value) is ExitCode.PRIVACY_BUDGET_SPENT
        assert f"round 2 would spend epsilon {spent[1]:.3g} at delta 1e-05, above privacy.target_epsilon" in str(
            caught.value)
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1]
    assert {e.round for e in ledger.events("round_started")} == {1}, "round 2 was never launched"
    stops = ledger.events("run_stopped")
    assert [e.detail["error"] for e in stops] == ["PrivacyBudgetReached"] * 2
    assert all("round 2 would spend" in e.detail["reason"] for e in stops)
    recorded = [e.detail["epsilon"] for e in ledger.events("aggregated") if e.round]
    assert recorded == pytest.approx(spent[:1], rel=1e-12)


def test_fedbuff_stops_before_committing_the_server_step_past_the_budget(tmp_path: Path) -> None:
    """Asynchronously there is no round to hold back: the step that would pass the target is never committed."""
    spent = [epsilon_after(1.0, 1.0, r, 1e-5) for r in (1, 2, 3)]
    path = private_scenario(tmp_path, {"name": "fedbuff", "rounds": 4, "buffer_size": 2},
                            {"noise_multiplier": 1.0, "noise_seed": 3, "target_epsilon": (spent[1] + spent[2]) / 2})
    with pytest.raises(PrivacyBudgetReached, match=f"round 3 would spend epsilon {spent[2]:.3g}"):
        run(path)
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    steps = [e.detail for e in ledger.events("aggregated") if e.round]
    assert [step["epsilon"] for step in steps] == pytest.approx(spent[:2], rel=1e-12)
    assert all(len(step["update_norms"]) == 2 for step in steps)


def test_a_private_fedadam_run_with_adaptive_clipping_resumed_is_bit_identical_to_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """Noise generator, adaptive C, FedAdam's moments and the Poisson sample all continue across the restart."""
    privacy = {"noise_multiplier": 0.5, "noise_seed": 5,
               "clipping": {"mode": "adaptive", "clip_norm": 0.05, "count_noise_multiplier": 1.0}}
    algorithm = {"name": "fedadam", "rounds": 1, "participation": 0.7}
    resumed = private_scenario(tmp_path / "A", algorithm, privacy, facilities=3)
    run(resumed)
    run(resumed, "algorithm.rounds=2")
    straight = private_scenario(tmp_path / "B", {**algorithm, "rounds": 2}, privacy, facilities=3)
    run(straight)
    runs = [tmp_path / name / "run" for name in "AB"]
    assert [e.detail["resumed_from"] for e in Ledger(runs[0] / "ledger.sqlite").events("run_started")] == [None, 1]
    a, b = (ExchangeDir(r / "global" / "r0002") for r in runs)
    assert a.names() == b.names()
    assert all(torch.equal(a.get(name), b.get(name)) for name in a.names())
    first = ExchangeDir(runs[0] / "global" / "r0001")
    assert not all(torch.equal(a.get(name), first.get(name)) for name in a.names())
    state = ExchangeDir(runs[1] / "server_state" / "r0002")
    assert any(name.startswith("privacy/") for name in state.names()), "the generator and C live in server state"
    assert any(name.endswith(".m") for name in state.names()), "beside FedAdam's moments"
    rows = [[e.detail for e in Ledger(r / "ledger.sqlite").events("aggregated") if e.round] for r in runs]
    keys = ("epsilon", "clip_norm", "next_clip_norm", "clipped", "facilities")
    assert [[row[k] for k in keys] for row in rows[0]] == [[row[k] for k in keys] for row in rows[1]]
    assert [len(row["facilities"]) for row in rows[1]] == [0, 2], "round 1 asked no one: a noise-only step"
    assert rows[1][0]["next_clip_norm"] == rows[1][1]["clip_norm"] != rows[1][0]["clip_norm"], "C adapts"
    assert rows[1][1]["epsilon"] == pytest.approx(epsilon_after(0.5, 0.7, 2, 1e-5), rel=1e-12)


# --- what a user sees, with real workers ----------------------------------------------------------


def test_the_privacy_example_reports_epsilon_per_round_everywhere_and_stops_at_its_budget(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = ["run", str(EXAMPLE), "--set", f"run_dir={run_dir}"]
    result = run_fedhpc(*base)
    assert result.returncode == 0, result.stdout + result.stderr
    z, delta = 0.05, 1e-5  # the example's
    expected = [epsilon_after(z, 1.0, r, delta) for r in (1, 2, 3, 4)]
    assert expected[0] < expected[1] < expected[2]

    rows = {e.round: e.detail for e in Ledger(run_dir / "ledger.sqlite").events("aggregated") if e.round}
    assert [rows[r]["epsilon"] for r in (1, 2, 3)] == pytest.approx(expected[:3], rel=1e-12)
    assert all(rows[r]["delta"] == delta and rows[r]["clip_norm"] == 2.0 for r in rows)
    assert all(len(rows[r]["update_norms"]) == 2 and rows[r]["clipped"] <= 2 for r in rows)
    logged = {e["round"]: e["epsilon"] for e in run_events(run_dir) if e["event"] == "aggregated" and e["round"]}
    assert logged == {r: rows[r]["epsilon"] for r in rows}
    for r in (1, 2, 3):
        assert re.search(rf"round {r}/3 done in .*, epsilon {expected[r - 1]:.3g} \(delta 1e-05\)", result.stdout)
    report = (run_dir / "report.html").read_text()
    assert '<section id="privacy"><h2>Privacy</h2>' in report
    assert f"ε = {expected[2]:.3g}" in report or f"ε = {expected[2]:.4g}" in report
    status = run_status(run_dir).as_dict()  # what `fedhpc status --json` prints (tests/test_cli_status.py)
    assert status["epsilon"] == pytest.approx(expected[2]) and status["delta"] == delta

    # A fourth round would pass a budget between rounds 3 and 4: the extended run stops before launching it.
    target = (expected[2] + expected[3]) / 2
    stopped = run_fedhpc(*base, "--set", "algorithm.rounds=4", "--set", f"privacy.target_epsilon={target}")
    assert stopped.returncode == ExitCode.PRIVACY_BUDGET_SPENT, stopped.stdout + stopped.stderr
    assert f"stopped: privacy budget reached: round 4 would spend epsilon {expected[3]:.3g}" in " ".join(
        stopped.stderr.split())
    assert not Ledger(run_dir / "ledger.sqlite").events("round_started", round=4)
    status = run_status(run_dir).as_dict()
    assert status["state"] == "stopped" and "privacy budget reached" in status["reason"]
