"""Test-only fault injection for real worker processes, and for the server.

Tests put this directory on a facility's PYTHONPATH (via `launcher.env`, or the
server's environment, which workers inherit) and name a fault in
FEDHPC_TEST_FAULT; Python imports this module at start-up in every rank, and it
wraps the exchange writer so the worker publishes a broken update, or makes the
worker crash (`crash`: exit 3), lose a rank (`rank_kill`: the rank
FEDHPC_TEST_KILL_RANK, default 0, SIGKILLs itself before training) or hang
(`slow`). FEDHPC_TEST_FAULT_FACILITY (comma-separated names; unset: every
facility) limits `crash`, `rank_kill` and `slow` to those facilities, so the
fault can sit in the server's environment and be removed for a resume without
changing the experiment file. Nothing in src/ knows about it.

FEDHPC_TEST_SERVER_KILL=<point>[:<nth>] makes the `fedhpc run` process itself
SIGKILL itself at a code point (`server_faults.py`); workers ignore it.
"""

import json
import os
import signal
import sys

FAULT = os.environ.get("FEDHPC_TEST_FAULT", "")
_FACILITIES = {f for f in os.environ.get("FEDHPC_TEST_FAULT_FACILITY", "").split(",") if f.strip()}
_SERVER_KILL = os.environ.get("FEDHPC_TEST_SERVER_KILL", "")


def _targets(facility):
    return not _FACILITIES or facility in _FACILITIES


if _SERVER_KILL and sys.orig_argv[1:3] == ["-m", "fedhpc"] and sys.argv[1:2] == ["run"]:
    import server_faults

    server_faults.install(_SERVER_KILL)

if FAULT == "crash":
    import fedhpc.worker.main as _main

    _original_run_task = _main.run_task

    def _crash(task_path, *args, **kwargs):
        with open(task_path) as handle:
            facility = json.load(handle).get("facility")
        if _targets(facility):
            raise SystemExit(3)
        return _original_run_task(task_path, *args, **kwargs)

    _main.run_task = _crash

elif FAULT == "rank_kill":
    from fedhpc.worker.train_recipe import TrainRecipe

    _KILL_RANK = os.environ.get("FEDHPC_TEST_KILL_RANK", "0")
    _original_train = TrainRecipe.train

    def _killed_train(self):
        if _targets(self.task.facility) and os.environ.get("RANK", "0") == _KILL_RANK:
            os.kill(os.getpid(), signal.SIGKILL)
        return _original_train(self)

    TrainRecipe.train = _killed_train

elif FAULT == "slow":
    # Sleep FEDHPC_TEST_SLOW_SECONDS before training (every rank), in the rounds listed in
    # FEDHPC_TEST_SLOW_ROUNDS (comma-separated; unset: every round): a facility that misses a deadline.
    # FEDHPC_TEST_SLOW_WORKERS (comma-separated inbox names, e.g. w0001; unset: every process) limits
    # it to those persistent workers: one allocation that hangs until its walltime, not its successor.
    import time

    from fedhpc.worker.train_recipe import TrainRecipe

    _SLOW_SECONDS = float(os.environ.get("FEDHPC_TEST_SLOW_SECONDS", "30"))
    _SLOW_ROUNDS = {int(r) for r in os.environ.get("FEDHPC_TEST_SLOW_ROUNDS", "").split(",") if r.strip()}
    _SLOW_WORKERS = {w for w in os.environ.get("FEDHPC_TEST_SLOW_WORKERS", "").split(",") if w.strip()}
    _INBOX = sys.argv[sys.argv.index("--inbox") + 1] if "--inbox" in sys.argv[:-1] else ""
    _original_train = TrainRecipe.train

    def _slow_train(self):
        in_worker = not _SLOW_WORKERS or os.path.basename(_INBOX.rstrip("/")) in _SLOW_WORKERS
        in_round = not _SLOW_ROUNDS or self.task.round in _SLOW_ROUNDS
        if in_worker and in_round and _targets(self.task.facility):
            time.sleep(_SLOW_SECONDS)
        return _original_train(self)

    TrainRecipe.train = _slow_train

elif FAULT:
    import torch

    import fedhpc.exchange as _exchange
    import fedhpc.exchange.writer as _writer

    _original = _writer.write_state_dict

    def _faulty_write(dest, state, meta, shard_bytes=_writer.DEFAULT_SHARD_BYTES):
        state = dict(state)
        first = next(iter(state))
        if meta.kind == "update" and FAULT == "missing_tensor":
            del state[first]
        elif meta.kind == "update" and FAULT == "shape":
            state[first] = torch.zeros(3, 3, dtype=state[first].dtype)
        elif meta.kind == "update" and FAULT == "non_finite":
            state[first] = state[first].clone()
            state[first].view(-1)[0] = float("nan")
        manifest = _original(dest, state, meta, shard_bytes)
        if meta.kind == "update" and FAULT == "checksum":
            shard = os.path.join(dest, next(iter(manifest.files)))
            with open(shard, "r+b") as handle:
                handle.seek(-1, os.SEEK_END)
                last = handle.read(1)
                handle.seek(-1, os.SEEK_END)
                handle.write(bytes([last[0] ^ 0xFF]))
        return manifest

    _writer.write_state_dict = _faulty_write
    _exchange.write_state_dict = _faulty_write
