"""Test-only fault injection for real worker processes.

Tests put this directory on a facility's PYTHONPATH (via `launcher.env`) and
name a fault in FEDHPC_TEST_FAULT; Python imports this module at start-up in
every rank, and it wraps the exchange writer so the worker publishes a broken
update, or makes the worker crash. Nothing in src/ knows about it.
"""

import os

FAULT = os.environ.get("FEDHPC_TEST_FAULT", "")

if FAULT == "crash":
    import fedhpc.worker.main as _main

    def _crash(task_path):
        raise SystemExit(3)

    _main.run_task = _crash

elif FAULT == "slow":
    # Sleep FEDHPC_TEST_SLOW_SECONDS before training (every rank), in the rounds listed in
    # FEDHPC_TEST_SLOW_ROUNDS (comma-separated; unset: every round): a facility that misses a deadline.
    # FEDHPC_TEST_SLOW_WORKERS (comma-separated inbox names, e.g. w0001; unset: every process) limits
    # it to those persistent workers: one allocation that hangs until its walltime, not its successor.
    import sys
    import time

    import fedhpc.worker.main as _main

    _SLOW_SECONDS = float(os.environ.get("FEDHPC_TEST_SLOW_SECONDS", "30"))
    _SLOW_ROUNDS = {int(r) for r in os.environ.get("FEDHPC_TEST_SLOW_ROUNDS", "").split(",") if r.strip()}
    _SLOW_WORKERS = {w for w in os.environ.get("FEDHPC_TEST_SLOW_WORKERS", "").split(",") if w.strip()}
    _INBOX = sys.argv[sys.argv.index("--inbox") + 1] if "--inbox" in sys.argv[:-1] else ""
    _original_train = _main.RoundRecipe.train

    def _slow_train(self):
        in_worker = not _SLOW_WORKERS or os.path.basename(_INBOX.rstrip("/")) in _SLOW_WORKERS
        if in_worker and (not _SLOW_ROUNDS or self.task.round in _SLOW_ROUNDS):
            time.sleep(_SLOW_SECONDS)
        return _original_train(self)

    _main.RoundRecipe.train = _slow_train

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
