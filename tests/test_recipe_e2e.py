"""A recipe per facility, end to end: real server, real torchrun workers (gloo on CPU), real files.

Two facilities train the quickstart's data with different recipes: alpha a per-round job with its
own micro-batch, accumulation, steps, lr, seq_len and no activation checkpointing; beta a persistent
worker on two ranks with a shorter seq_len and the rest inherited. The server is killed in round 2
and run again. What a user checks afterwards:
- each task.json asked each facility for its own recipe, and the model both trained is the same base;
- the updates' metrics show the workers obeyed it (steps taken, tokens, the lr of every step);
- each global is the tokens-weighted mean of its round's updates (`weighting: tokens`);
- the learning rate follows one warm-up-then-cosine curve over the whole run, across rounds, the
  resume and the persistent worker: it does not restart each round.
An asynchronous run (simulated launcher, virtual clock) checks that a job's place on the curve is
the global version it trains from, with one facility training epochs within its step bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from conftest import ROOT, run_fedhpc, sigkill_server_in_round
from fedhpc.config import load_experiment
from fedhpc.exchange import ExchangeDir, LrSchedule, WorkerTask
from fedhpc.lr_schedule import learning_rate
from fedhpc.report.progress import ProgressView
from fedhpc.clock import VirtualClock
from fedhpc.run.ledger import Ledger
from fedhpc.run.orchestrator import Orchestrator
from fedhpc.simulate.launcher import simulated_launchers

DATA = ROOT / "examples" / "quickstart" / "data"
L = 6  # algorithm.local_steps: federation steps per round
ROUNDS = 3
PEAK = {"alpha": 0.004, "beta": 0.002}
STEPS = {"alpha": 4, "beta": L}
SCHEDULE = LrSchedule(kind="cosine", warmup_steps=3, total_steps=ROUNDS * L, min_lr_ratio=0.1)


def _experiment(tmp_path: Path) -> Path:
    document = {
        "name": "recipes-e2e",
        "run_dir": str(tmp_path / "run"),
        "model": {"source": "tiny-llama", "dtype": "float32", "peft": "none",
                  "full": {"sharding": "ddp", "activation_checkpointing": True}},
        "data": {"seq_len": 96},
        "algorithm": {"name": "fedavg", "rounds": ROUNDS, "local_steps": L, "lr": PEAK["beta"], "batch_size": 4,
                      "weighting": "tokens", "max_grad_norm": 1.0, "min_facilities": 2, "round_timeout": 600,
                      "lr_schedule": {"kind": "cosine", "warmup_steps": 3, "min_lr_ratio": 0.1}},
        "facilities": [
            {"name": "alpha", "data": str(DATA / "alpha.jsonl"), "launcher": {"kind": "local", "nprocs": 1},
             "train": {"batch_size": 2, "grad_accum_steps": 3, "local_steps": STEPS["alpha"], "lr": PEAK["alpha"],
                       "seq_len": 64, "activation_checkpointing": False}},
            {"name": "beta", "data": str(DATA / "beta.jsonl"), "launcher": {"kind": "local", "nprocs": 2},
             "mode": "persistent", "train": {"seq_len": 48}},
        ],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _kill_in_round_2_then_resume(args: list[str], run_dir: Path) -> None:
    """As `test_run_e2e`: SIGKILL the server once round 2's jobs are submitted, then run the same command."""
    sigkill_server_in_round(args, run_dir, 2, timeout=600)
    result = run_fedhpc(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def _tasks(run_dir: Path) -> list[WorkerTask]:
    tasks = [WorkerTask.read(path) for path in sorted((run_dir / "logs").glob("r*/*-task/task.json"))]
    return [task for task in tasks if task.mode == "train"]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    source = ExchangeDir(path)
    return {name: source.get(name).float() for name in source.names()}


def test_each_facility_trains_its_recipe_on_one_schedule_across_rounds_a_resume_and_a_persistent_worker(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    _kill_in_round_2_then_resume(["run", str(_experiment(tmp_path))], run_dir)
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2, 3]
    assert sorted(e.round for e in ledger.events("aggregated")) == [0, 1, 2, 3], "a round aggregated twice or never"
    assert [e.detail["resumed_from"] for e in ledger.events("run_started")] == [None, 1]
    assert not ledger.events("rejected"), [e.detail for e in ledger.events("rejected")]

    # 1. every task asked its facility for its own recipe; the place on the curve comes from the round alone,
    #    so the round-2 job the resumed server launched (or took in) got the same one as the killed server's
    tasks = _tasks(run_dir)
    assert {(t.facility, t.round) for t in tasks} == {(f, r) for f in PEAK for r in range(1, ROUNDS + 1)}
    for task in tasks:
        train = task.train
        assert train is not None
        mine = (train.batch_size, train.grad_accum_steps, train.local_steps, train.lr, task.data_config.seq_len,
                task.model.full.activation_checkpointing)
        assert mine == ((2, 3, 4, PEAK["alpha"], 64, False) if task.facility == "alpha" else
                        (4, 1, L, PEAK["beta"], 48, True)), task.facility
        assert (train.max_grad_norm, train.local_epochs, train.schedule) == (1.0, None, SCHEDULE)
        assert (train.schedule_start, train.schedule_span) == ((task.round - 1) * L, L)

    # 2. the workers obeyed: the steps, the tokens within the recipe, and one lr per step at its position;
    #    both facilities built the same base model (the update's fingerprint is the run's)
    fingerprint = ExchangeDir(run_dir / "global" / "r0000").manifest.base_fingerprint
    lrs: dict[str, list[tuple[float, float]]] = {name: [] for name in PEAK}  # (position, lr / facility's peak)
    tokens: dict[tuple[str, int], int] = {}
    for round in range(1, ROUNDS + 1):
        for name in PEAK:
            manifest = ExchangeDir(run_dir / "updates" / f"r{round:04d}" / name).manifest
            assert manifest.base_fingerprint == fingerprint
            steps, metrics = manifest.local_steps, manifest.metrics
            assert steps == STEPS[name]
            batch, accum, ranks, seq_len = (2, 3, 1, 64) if name == "alpha" else (4, 1, 2, 48)
            assert 0 < metrics["tokens"] <= steps * batch * accum * ranks * seq_len
            tokens[name, round] = metrics["tokens"]
            positions = [(round - 1) * L + k * L / steps for k in range(steps)]
            assert metrics["lr"] == pytest.approx([learning_rate(SCHEDULE, PEAK[name], p) for p in positions])
            lrs[name] += [(p, lr / PEAK[name]) for p, lr in zip(positions, metrics["lr"])]
    # one curve: where both facilities train at the same federation step, their lr / peak agree
    alpha_at, beta_at = dict(lrs["alpha"]), dict(lrs["beta"])
    shared = sorted(set(alpha_at) & set(beta_at))
    assert len(shared) == 2 * ROUNDS  # each round's start and its midpoint (alpha's step 3 of 4, beta's 4 of 6)
    assert [alpha_at[p] for p in shared] == pytest.approx([beta_at[p] for p in shared])
    # warm-up rises to the peak, then the decay falls steadily to the end: no round starts the curve again
    curve = [lr for _, lr in sorted(beta_at.items())]
    assert curve[:4] == sorted(curve[:4]) and curve[3] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in zip(curve[3:], curve[4:])), curve
    assert curve[-1] > 0.1

    # 3. each global is the tokens-weighted mean of its round's two updates (FedAvg on the trained weights)
    for round in range(1, ROUNDS + 1):
        share = tokens["alpha", round] / (tokens["alpha", round] + tokens["beta", round])
        alpha, beta = (_tensors(run_dir / "updates" / f"r{round:04d}" / name) for name in PEAK)
        expected = {name: share * alpha[name] + (1 - share) * beta[name] for name in alpha}
        result = _tensors(run_dir / "global" / f"r{round:04d}")
        for name, tensor in result.items():
            torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)
    # beta trained in persistent workers: one per server, the resumed server's taking more than one round's task
    assert [e.facility for e in ledger.events("worker_started")] == ["beta", "beta"]


def test_an_asynchronous_job_starts_on_the_curve_at_the_version_it_trains_from(tmp_path: Path) -> None:
    document = {
        "name": "recipes-async",
        "run_dir": str(tmp_path / "run"),
        "model": {"source": "tiny-llama", "tiny": {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64},
                  "peft": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"seq_len": 48},
        "algorithm": {"name": "fedasync", "rounds": 6, "local_steps": 2, "lr": 0.01, "batch_size": 2,
                      "weighting": "tokens", "lr_schedule": {"kind": "linear", "warmup_steps": 2}},
        "facilities": [
            # epochs: 0.025 × 240 examples / 2 per step = 3 steps, within the bound of 5
            {"name": "fast", "data": str(DATA / "alpha.jsonl"), "train": {"local_epochs": 0.025, "local_steps": 5},
             "launcher": {"kind": "simulated", "seconds_per_step": 1.0, "startup": 1.0, "seed": 0}},
            {"name": "slow", "data": str(DATA / "beta.jsonl"), "train": {"local_steps": 1, "lr": 0.02},
             "launcher": {"kind": "simulated", "seconds_per_step": 7.0, "startup": 1.0, "seed": 1}},
        ],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    experiment = load_experiment(path)
    with ProgressView(experiment.name, 6, ["fast", "slow"], console=Console(quiet=True)) as view:
        clock = VirtualClock(start=0.0)
        orchestrator = Orchestrator(experiment, view, clock, launchers=simulated_launchers(experiment.facilities,
                                                                                           clock))
        try:
            orchestrator.run()
        finally:
            orchestrator.close()
    run_dir = experiment.resolved_run_dir()
    schedule = LrSchedule(kind="linear", warmup_steps=2, total_steps=12)
    tasks = _tasks(run_dir)
    assert {t.facility for t in tasks} == {"fast", "slow"} and len({t.round for t in tasks}) > 3
    for task in tasks:
        train = task.train
        assert train is not None
        assert task.global_dir is not None and task.global_dir.name == f"r{task.round - 1:04d}"
        assert (train.schedule, train.schedule_start, train.schedule_span) == (schedule, (task.round - 1) * 2, 2)
        assert (train.local_steps, train.local_epochs, train.lr) == (
            (1, None, 0.02) if task.facility == "slow" else (5, 0.025, 0.01))
    applied = [e for e in Ledger(run_dir / "ledger.sqlite").events("accepted")]
    assert applied
    for event in applied:  # each applied update trained at the lrs of its own place on the curve
        task = next(t for t in tasks if t.facility == event.facility and t.update_dir.name == event.detail["attempt"])
        manifest = ExchangeDir(Path(event.detail["path"])).manifest if Path(event.detail["path"]).exists() else None
        if manifest is None:  # applied and removed: its staged copy stays at the facility
            manifest = ExchangeDir(task.update_dir).manifest
        steps = manifest.local_steps
        assert steps == (1 if task.facility == "slow" else 3)
        positions = [(task.round - 1) * 2 + k * 2 / steps for k in range(steps)]
        assert manifest.metrics["lr"] == pytest.approx([learning_rate(schedule, task.train.lr, p) for p in positions])
