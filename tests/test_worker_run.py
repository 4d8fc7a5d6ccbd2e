"""The worker as the server runs it: real processes under torchrun (gloo on CPU), 1 and 2 ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedhpc.config import DataConfig, ModelConfig
from fedhpc.exchange import ExchangeDir, TrainSettings, WorkerTask
from fedhpc.worker.main import run_task
from fedhpc.worker.model import build_base_model

RUN_TASK = "from fedhpc.worker.main import run_task; import sys; run_task(sys.argv[1])"
MODEL = ModelConfig()  # the default tiny-llama with LoRA on the attention projections


def torchrun(task: Path, nprocs: int) -> subprocess.CompletedProcess[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--no-python", f"--nproc-per-node={nprocs}",
        "--master-addr=127.0.0.1", f"--master-port={port}", sys.executable, "-c", RUN_TASK, str(task),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def write_dataset(path: Path, count: int = 48) -> Path:
    """Repetitive on purpose: a few minutes of CPU must be enough to see the loss fall."""
    colours = ["red", "green", "blue"]
    with open(path, "w") as handle:
        for i in range(count):
            colour = colours[i % 3]
            handle.write(json.dumps({"instruction": "Repeat the colour.", "input": colour, "output": f"{colour} " * 3}))
            handle.write("\n")
    return path


def init_global(directory: Path, model: ModelConfig) -> Path:
    task = WorkerTask(mode="init", round=0, facility="alpha", update_dir=directory / "r0000", model=model, device="cpu")
    task.write(directory / "init.json")
    run_task(directory / "init.json")
    return directory / "r0000"


def train_task(root: Path, global_dir: Path, name: str, **changes: object) -> Path:
    settings = {
        "mode": "train", "round": 1, "facility": "alpha", "global_dir": global_dir, "device": "cpu",
        "update_dir": root / name / "update", "progress_file": root / name / "progress.json",
        "data": root / "data.jsonl", "model": MODEL, "data_config": DataConfig(seq_len=64),
        "train": TrainSettings(local_steps=20, lr=1e-2, batch_size=4, seed=0),
    }  # fmt: skip
    settings.update(changes)
    path = root / name / "task.json"
    WorkerTask(**settings).write(path)
    return path


def make_workspace(root: Path) -> Path:
    """The dataset and the round-0 global (`global/r0000`) that `train_task` expects under `root`."""
    write_dataset(root / "data.jsonl")
    init_global(root / "global", MODEL)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("worker"))


def test_init_writes_a_verifiable_round_zero_global(workspace: Path) -> None:
    global_ = ExchangeDir(workspace / "global" / "r0000")
    global_.verify(fingerprint=build_base_model(MODEL).fingerprint)
    manifest = global_.manifest
    assert (manifest.kind, manifest.round) == ("global", 0)
    assert len(manifest.tensors) == 2 * 2 * 4  # layers x (A, B) x q/k/v/o
    assert {entry.dtype for entry in manifest.tensors.values()} == {"float32"}


def test_two_rank_round_trains_from_the_global_and_publishes_an_update(workspace: Path) -> None:
    result = torchrun(train_task(workspace, workspace / "global" / "r0000", "two"), nprocs=2)
    assert result.returncode == 0, result.stderr[-4000:]
    global_ = ExchangeDir(workspace / "global" / "r0000")
    update = ExchangeDir(workspace / "two" / "update")
    update.verify(expected_shapes={n: e.shape for n, e in global_.manifest.tensors.items()},
                  fingerprint=global_.manifest.base_fingerprint)  # fmt: skip
    manifest = update.manifest
    assert (manifest.kind, manifest.round, manifest.based_on_round, manifest.facility) == ("update", 1, 0, "alpha")
    assert (manifest.num_samples, manifest.local_steps) == (48, 20)
    metrics = manifest.metrics
    assert (metrics["world_size"], metrics["device"], metrics["samples_seen"]) == (2, "cpu", 20 * 4 * 2)
    assert metrics["tokens"] > 0 and metrics["train_seconds"] > 0 and metrics["load_seconds"] > 0
    losses = metrics["loss"]
    assert len(losses) == 20 and all(isinstance(loss, float) for loss in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    changed = [name for name in global_.names() if not torch.equal(update.get(name), global_.get(name))]
    assert changed == global_.names()
    progress = json.loads((workspace / "two" / "progress.json").read_text())
    assert progress["phase"] == "done" and progress["step"] == progress["local_steps"] == 20
    assert progress["loss"] == pytest.approx(losses[-1])


def test_one_rank_full_fine_tuning_with_packing(workspace: Path, tmp_path: Path) -> None:
    model = MODEL.model_copy(update={"peft": "none"})
    global_dir = init_global(tmp_path, model)
    task = train_task(
        workspace, global_dir, "one", model=model, update_dtype="bfloat16",
        data_config=DataConfig(seq_len=128, packing=True), train=TrainSettings(local_steps=4, lr=1e-3, batch_size=2),
    )  # fmt: skip
    result = torchrun(task, nprocs=1)
    assert result.returncode == 0, result.stderr[-4000:]
    update = ExchangeDir(workspace / "one" / "update")
    update.verify(expected_shapes={n: e.shape for n, e in ExchangeDir(global_dir).manifest.tensors.items()})
    assert {entry.dtype for entry in update.manifest.tensors.values()} == {"bfloat16"}
    assert update.manifest.metrics["world_size"] == 1
    assert update.manifest.metrics["samples_seen"] > 4 * 2  # several examples per packed row


def test_a_rank_that_fails_fails_the_whole_job(workspace: Path) -> None:
    """Rank 0 rejects a global built from another base model; torchrun then stops rank 1 too."""
    other_base = MODEL.model_copy(update={"tiny": MODEL.tiny.model_copy(update={"seed": 1})})
    result = torchrun(train_task(workspace, workspace / "global" / "r0000", "bad", model=other_base), nprocs=2)
    assert result.returncode != 0
    assert "fingerprint" in result.stderr
    assert not (workspace / "bad" / "update").exists()


def test_unreadable_task_exits_non_zero(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run_task(tmp_path / "absent.json")
    assert info.value.code == 1
