"""`fedhpc worker --task TASK.json`: one facility job, as a recipe read top to bottom.

validate (`RoundRecipe.__init__`) → `setup` → `train` → `save` → `cleanup`.

Every rank runs the same command; the launcher sets the ranks, e.g. on CPU:

    GLOO_SOCKET_IFNAME=lo python -m torch.distributed.run --no-python --nproc-per-node 2 \\
        --master-addr 127.0.0.1 --master-port 29500 python -m fedhpc worker --task task.json

`mode: init` builds the seeded base model and adapters and publishes their
trainable state as the round-0 global (one rank is enough). `mode: train`
applies the staged global, trains `local_steps` steps on this facility's data
and publishes the update. Rank 0 alone logs, rewrites the progress file and
writes the output. The exit status is the result the server sees: 0 means the
output directory is published; anything else means it is not.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from pydantic import ValidationError
from transformers import set_seed
from transformers.utils.logging import disable_progress_bar

from fedhpc.errors import ConfigError, FedhpcError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, WorkerTask, dtype_from_name, write_state_dict
from fedhpc.worker.data import batches, read_examples, shard_indices
from fedhpc.worker.distributed import (
    RankEnv,
    barrier,
    destroy_process_group,
    init_process_group,
    rank_env,
    resolve_device,
)
from fedhpc.worker.model import add_trainable, apply_global, build_base_model, extract_trainable
from fedhpc.worker.train import TrainResult, train_local_steps

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def run_task(task_path: Path | str) -> None:
    """Run one task on this rank; on any failure log it and exit with status 1."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    env = RankEnv()
    try:
        env = rank_env()
        # Rank 0 speaks for the job; the others only report their own failures.
        logging.getLogger("fedhpc").setLevel(logging.INFO if env.is_main else logging.ERROR)
        execute_task(Path(task_path), env)
    except FedhpcError as e:  # an expected failure: its message says what to fix
        logger.error("rank %d of %d: task %s failed: %s", env.rank, env.world_size, task_path, e)
        raise SystemExit(1) from e
    except Exception as e:
        logger.exception("rank %d of %d: task %s failed: %s", env.rank, env.world_size, task_path, e)
        raise SystemExit(1) from e


def execute_task(task_path: Path, env: RankEnv) -> None:
    """The recipe, top to bottom; raises on failure (`run_task` turns that into the exit status).

    The simulated launcher calls this in the server's process, where exiting or
    reconfiguring logging would hit the server itself.
    """
    disable_progress_bar()  # per-tensor loading bars from every rank would drown the job log
    recipe = RoundRecipe(read_task(task_path), env)
    recipe.setup()
    recipe.train()
    recipe.save()
    recipe.cleanup()


def read_task(path: Path) -> WorkerTask:
    try:
        return WorkerTask.read(path)
    except OSError as e:
        raise ConfigError(f"cannot read the task file: {e.strerror}", file=str(path)) from e
    except ValidationError as e:
        raise ConfigError(f"not a valid worker task: {e}", file=str(path)) from e


class RoundRecipe:
    """One task on one rank. Attributes set in `setup` are used by the later phases."""

    def __init__(self, task: WorkerTask, env: RankEnv):
        if task.mode == "train":
            for key in ("global_dir", "data", "train"):
                if getattr(task, key) is None:
                    raise ConfigError(f"mode 'train' needs {key!r}", key=key)
        self.task = task
        self.env = env
        self.device = resolve_device(task.device, env)
        self.local_steps = task.train.local_steps if task.train is not None else 0
        self.result: TrainResult | None = None

    def setup(self) -> None:
        """Join the job, build base model + adapters, apply the global, read this rank's data shard."""
        task, env = self.task, self.env
        init_process_group(env, self.device)
        start = time.perf_counter()
        self._progress("loading")
        logger.info(
            "round %d at %s: %s on %d rank(s), device %s", task.round, task.facility, task.mode, env.world_size,
            self.device,
        )
        base = build_base_model(task.model)
        self.model = add_trainable(base.model, task.model)
        self.fingerprint = base.fingerprint
        if task.mode == "train":
            assert task.global_dir is not None and task.data is not None and task.train is not None
            global_ = ExchangeDir(task.global_dir)
            if env.is_main:  # once per job: a bad global fails rank 0, and torchrun stops the rest
                global_.verify(fingerprint=base.fingerprint)
            apply_global(self.model, global_)
            self.based_on_round = global_.manifest.round
            global_.close()
            examples = read_examples(task.data)
            self.num_samples = len(examples)
            shard = [examples[i] for i in shard_indices(len(examples), env.rank, env.world_size, task.train.seed)]
            self.batches = batches(shard, base.tokenizer, task.data_config, task.train.batch_size)
            logger.info("%d examples at this facility, %d on rank 0", len(examples), len(shard))
        self.load_seconds = time.perf_counter() - start

    def train(self) -> None:
        if self.task.mode != "train":
            return
        settings = self.task.train
        assert settings is not None
        set_seed(settings.seed)  # the server derives a job's seed (docs/contracts.md): data order and dropout

        def on_step(step: int, loss: float) -> None:
            logger.info("step %d/%d loss %.4f", step, settings.local_steps, loss)
            self._progress("training", step=step, loss=loss)

        self._progress("training")
        self.result = train_local_steps(
            self.model, self.batches, settings, self.device, self.env, dtype_from_name(self.task.model.dtype), on_step
        )

    def save(self) -> None:
        """Rank 0 publishes the trainable state (atomically, manifest last)."""
        task = self.task
        last_loss = self.result.losses[-1] if self.result else None
        if self.env.is_main:
            self._progress("saving", step=self.local_steps, loss=last_loss)
            if self.result is None:  # init: the round-0 global, an fp32 master copy
                state = extract_trainable(self.model, torch.float32)
                meta = ExchangeMeta(
                    kind="global",
                    round=0,
                    base_fingerprint=self.fingerprint,
                    metrics={"load_seconds": self.load_seconds, "device": self.device.type},
                )
            else:
                state = extract_trainable(self.model, dtype_from_name(task.update_dtype))
                meta = ExchangeMeta(
                    kind="update",
                    round=task.round,
                    facility=task.facility,
                    based_on_round=self.based_on_round,
                    num_samples=self.num_samples,
                    local_steps=self.local_steps,
                    base_fingerprint=self.fingerprint,
                    metrics={
                        "loss": self.result.losses,
                        "tokens": self.result.tokens,
                        "samples_seen": self.result.samples_seen,
                        "train_seconds": self.result.seconds,
                        "load_seconds": self.load_seconds,
                        "world_size": self.env.world_size,
                        "device": self.device.type,
                    },
                )
            manifest = write_state_dict(task.update_dir, state, meta, shard_bytes=task.shard_bytes)
            logger.info("wrote %s: %d tensors", task.update_dir, len(manifest.tensors))
            self._progress("done", step=self.local_steps, loss=last_loss)

    def cleanup(self) -> None:
        """Hold every rank until rank 0 has published, then leave the process group."""
        barrier()
        destroy_process_group()

    def _progress(self, phase: str, step: int = 0, loss: float | None = None) -> None:
        if self.env.is_main and self.task.progress_file is not None:
            write_progress(self.task.progress_file, self.task.round, step, self.local_steps, loss, phase)


def write_progress(path: Path, round_: int, step: int, local_steps: int, loss: float | None, phase: str) -> None:
    """Rewrite progress.json atomically (docs/contracts.md), so a reader never sees half a file."""
    payload = {
        "round": round_, "step": step, "local_steps": local_steps, "loss": loss, "phase": phase,
        "updated_at": time.time(),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)
