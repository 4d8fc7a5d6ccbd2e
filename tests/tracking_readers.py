"""Reading back what the trackers wrote, through each tool's own reader.

- MLflow: a real tracking server on 127.0.0.1 (`mlflow server`, sqlite store), read with `MlflowClient`.
- TensorBoard: `EventAccumulator`, TensorBoard's own reader of event files.
- W&B offline: the `.wandb` file of each offline run folder. wandb's Python package no longer ships
  a reader for it (its Go core writes it), so this reads the file's LevelDB-log framing here and decodes
  each record with wandb's own protobuf schema (`wandb.proto.wandb_internal_pb2.Record`).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

_BLOCK = 32768
_WANDB_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_RECORD_HEADER = struct.Struct("<IHB")  # crc32, length, type (1 full, 2 first, 3 middle, 4 last)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free port of 127.0.0.1 with a sqlite store under `root`; returns it and its URI."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "mlflow-server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited {process.returncode}: {(root / 'mlflow-server.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return process, uri
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError(f"mlflow server not up after {timeout} s: {(root / 'mlflow-server.log').read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Killed outright, with its uvicorn workers (its own process group): a test's server keeps nothing worth a clean stop."""
    os.killpg(process.pid, 9)
    process.wait()


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in `log_dir` (all its event files) as (step, value) pairs, in file order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def wandb_records(path: Path) -> Iterator[object]:
    """The `Record`s of one `.wandb` file, in order."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    ident, magic, _ = _WANDB_HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a wandb log"
    offset, pending = _WANDB_HEADER.size, b""
    while offset + _RECORD_HEADER.size <= len(data):
        room = _BLOCK - offset % _BLOCK
        if room < _RECORD_HEADER.size:  # the rest of a block too small for a header is padding
            offset += room
            continue
        _, length, kind = _RECORD_HEADER.unpack_from(data, offset)
        if kind == 0:
            break
        chunk = data[offset + _RECORD_HEADER.size: offset + _RECORD_HEADER.size + length]
        offset += _RECORD_HEADER.size + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(wandb_dir: Path) -> dict[str, list[dict]]:
    """Each offline run's history rows (key -> value), by run id, over all of its folders (one per server start)."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):
        run_id = path.stem.removeprefix("run-")
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                runs.setdefault(run_id, []).append(row)
    return runs
