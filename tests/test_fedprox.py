"""FedProx (Li et al., 2020) at the worker: the proximal term keeps the local model near the global.

Real worker runs on the tiny model: μ = 0 must train exactly as FedAvg does (nothing is added to the
loss), and μ > 0 must end closer to the global it started from, on the same data with the same seed,
also under DDP (2 ranks, gloo).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedhpc.exchange import ExchangeDir, TrainSettings
from fedhpc.worker.main import run_task
from test_worker_run import MODEL, init_global, torchrun, train_task, write_dataset

STEPS = 8


def settings(**changes: float) -> TrainSettings:
    return TrainSettings(local_steps=STEPS, lr=1e-2, batch_size=4, seed=0, **changes)


def distance(update: Path, global_: Path) -> float:
    """‖update − global‖₂ over all trainable tensors."""
    u, g = ExchangeDir(update), ExchangeDir(global_)
    return sum(float((u.get(n) - g.get(n)).pow(2).sum()) for n in g.names()) ** 0.5


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fedprox")
    write_dataset(root / "data.jsonl")
    init_global(root / "global", MODEL)
    return root


def test_zero_mu_trains_exactly_like_fedavg(workspace: Path) -> None:
    global_dir = workspace / "global" / "r0000"
    run_task(train_task(workspace, global_dir, "fedavg", train=settings()))
    run_task(train_task(workspace, global_dir, "mu0", train=settings(proximal_mu=0.0)))
    fedavg, mu0 = ExchangeDir(workspace / "fedavg" / "update"), ExchangeDir(workspace / "mu0" / "update")
    assert all(torch.equal(fedavg.get(name), mu0.get(name)) for name in fedavg.names())
    assert fedavg.manifest.metrics["loss"] == mu0.manifest.metrics["loss"]
    assert distance(workspace / "fedavg" / "update", global_dir) > 0


def test_positive_mu_stays_closer_to_the_global_under_ddp(workspace: Path) -> None:
    global_dir = workspace / "global" / "r0000"
    for name, mu in (("ddp-mu0", 0.0), ("ddp-mu", 10.0)):
        result = torchrun(train_task(workspace, global_dir, name, train=settings(proximal_mu=mu)), nprocs=2)
        assert result.returncode == 0, result.stderr[-4000:]
    free = distance(workspace / "ddp-mu0" / "update", global_dir)
    proximal = distance(workspace / "ddp-mu" / "update", global_dir)
    assert 0 < proximal < 0.8 * free, (proximal, free)
    # The reported loss is the task loss alone, and it still falls.
    losses = ExchangeDir(workspace / "ddp-mu" / "update").manifest.metrics["loss"]
    assert len(losses) == STEPS and losses[-1] < losses[0]
