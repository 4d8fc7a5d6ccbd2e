"""The persistent worker as a launcher runs it: real processes under torchrun, the inbox as the only channel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedhpc.cli import app
from fedhpc.exchange import ExchangeDir, TrainSettings
from fedhpc.worker.distributed import RankEnv
from fedhpc.worker.inbox import Inbox
from fedhpc.worker.persistent import Command, share_bytes
from test_worker_run import MODEL, init_global, torchrun, train_task, write_dataset


def start_worker(inbox: Path, nprocs: int, *options: str) -> subprocess.Popen[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--no-python", f"--nproc-per-node={nprocs}",
        "--master-addr=127.0.0.1", f"--master-port={port}",
        sys.executable, "-m", "fedhpc", "worker", "--persistent", "--inbox", str(inbox), "--device", "cpu", *options,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def assign(inbox: Path, seq: int, task: Path) -> None:
    directory = inbox / "assign" / f"{seq:06d}"
    directory.mkdir(parents=True)
    (directory / "assignment.json").write_text(json.dumps({"seq": f"{seq:06d}", "task": str(task)}))


def announce_model(inbox: Path) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "worker.json").write_text(json.dumps({"worker": inbox.name, "model": MODEL.model_dump(mode="json")}))


def heartbeat(inbox: Path) -> dict:
    try:
        return json.loads((inbox / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return {}


def finish(worker: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        output, _ = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        output, _ = worker.communicate()
        pytest.fail(f"the worker did not exit within {timeout} s:\n{output[-4000:]}")
    return worker.returncode, output


def same_tensors(a: Path, b: Path) -> bool:
    first, second = ExchangeDir(a), ExchangeDir(b)
    return first.names() == second.names() and all(torch.equal(first.get(n), second.get(n)) for n in first.names())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("persistent")
    write_dataset(root / "data.jsonl")
    init_global(root / "global", MODEL)
    return root


def settings(seed: int) -> TrainSettings:
    return TrainSettings(local_steps=4, lr=1e-2, batch_size=4, seed=seed)


def test_two_ranks_train_tasks_in_order_survive_a_bad_one_skip_a_cancelled_one_and_exit_when_idle(
    workspace: Path, tmp_path: Path
) -> None:
    """Each update equals what a per-round job publishes for the same task: nothing leaks between tasks."""
    good = workspace / "global" / "r0000"
    corrupt = tmp_path / "corrupt-global"  # fails rank 0's checksum check only: the ranks must agree to skip it
    shutil.copytree(good, corrupt)
    shard = next(corrupt.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    inbox = tmp_path / "inbox"
    announce_model(inbox)
    tasks = {
        1: train_task(tmp_path, good, "first", round=1, train=settings(1), data=workspace / "data.jsonl"),
        2: train_task(tmp_path, corrupt, "corrupt", round=1, train=settings(2), data=workspace / "data.jsonl"),
        3: train_task(tmp_path, good, "cancelled", round=1, train=settings(3), data=workspace / "data.jsonl"),
        4: train_task(tmp_path, good, "second", round=2, train=settings(4), data=workspace / "data.jsonl"),
    }
    for seq, task in tasks.items():
        assign(inbox, seq, task)
    (inbox / "cancel" / "000003").mkdir(parents=True)

    code, output = finish(start_worker(inbox, 2, "--idle-timeout", "2", "--heartbeat-interval", "0.5"), 120)

    assert code == 0, output[-4000:]
    results = {seq: json.loads((inbox / "results" / f"{seq:06d}.json").read_text()) for seq in tasks}
    assert results[1]["ok"] and results[4]["ok"], results
    assert not results[2]["ok"] and "checksum" in results[2]["error"]
    assert not results[3]["ok"] and results[3]["cancelled"]
    assert not (tmp_path / "corrupt" / "update").exists() and not (tmp_path / "cancelled" / "update").exists()
    assert results[1]["load_seconds"] < 5 and results[4]["round"] == 2
    assert output.count("base model loaded in") == 1
    assert "stopping: no work for 2 s (idle_timeout)" in output
    beat = heartbeat(inbox)
    assert beat["state"] == "stopped" and beat["world_size"] == 2 and beat["base_load_seconds"] > 0
    assert beat["worker"] == "inbox" and beat["tasks_done"] == 3  # the cancelled one never started

    # the last task again, as a per-round job: the same bytes
    alone = train_task(tmp_path, good, "alone", round=2, train=settings(4), data=workspace / "data.jsonl")
    ran = torchrun(alone, 2)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert same_tensors(tmp_path / "alone" / "update", tmp_path / "second" / "update")
    assert not same_tensors(tmp_path / "first" / "update", tmp_path / "second" / "update")


def test_the_stop_file_ends_an_idle_worker_with_status_0(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    announce_model(inbox)
    worker = start_worker(inbox, 1, "--idle-timeout", "600", "--heartbeat-interval", "0.5")
    deadline = time.monotonic() + 60
    while heartbeat(inbox).get("state") != "idle" and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first = heartbeat(inbox)
    assert first.get("state") == "idle", first
    time.sleep(1.2)
    assert heartbeat(inbox)["updated_at"] > first["updated_at"], "the heartbeat is rewritten while idle"
    (inbox / "stop").write_text("")
    stopped = time.monotonic()
    code, output = finish(worker, 30)
    assert code == 0, output[-3000:]
    assert time.monotonic() - stopped < 10
    assert "the server wrote the stop file" in output
    assert heartbeat(inbox)["state"] == "stopped"


def test_a_worker_without_an_announced_model_loads_it_with_the_first_task(workspace: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    task = train_task(tmp_path, workspace / "global" / "r0000", "only", round=1, train=settings(1),
                      data=workspace / "data.jsonl")
    assign(inbox, 1, task)
    code, output = finish(start_worker(inbox, 1, "--idle-timeout", "1"), 120)
    assert code == 0, output[-3000:]
    result = json.loads((inbox / "results" / "000001.json").read_text())
    assert result["ok"], result
    assert result["load_seconds"] >= heartbeat(inbox)["base_load_seconds"] > 0  # the task waited for the build
    assert output.count("base model loaded in") == 1


def test_pending_assignments_come_in_sequence_order_without_partial_copies(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    inbox.create()
    for name in ("000010", "000002", ".000003.partial-1-abcd"):
        (tmp_path / "assign" / name).mkdir()
    inbox.write_result("000002", {"ok": True})
    assert inbox.pending() == ["000010"]
    assert json.loads(inbox.result_path("000002").read_text())["ok"] is True


def test_a_command_travels_as_json_bytes() -> None:
    command = Command("task", seq="000007", task="/staging/tasks/r0001-a0/task.json")
    assert Command.decode(command.encode()) == command
    assert share_bytes(b"abc", RankEnv(), torch.device("cpu")) == b"abc"  # one rank: nothing to broadcast


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --task"),
        (["--task", "t.json", "--persistent", "--inbox", "x"], "exactly one of --task"),
        (["--persistent"], "--persistent needs --inbox"),
        (["--task", "t.json", "--inbox", "x"], "--inbox goes with --persistent"),
        (["--persistent", "--inbox", "x", "--device", "tpu"], "--device must be"),
    ],
)
def test_the_worker_command_wants_one_mode(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["worker", *args])
    assert result.exit_code == 2
    assert message in result.output
