"""`fedhpc worker --task TASK.json`: one facility job, as a recipe read top to bottom.

validate (`RoundRecipe.__init__`) → `setup` (join the job, `load_base`,
`prepare_task`) → `train` → `save` → `cleanup`. A persistent worker
(`fedhpc.worker.persistent`) runs the same recipe with a base model it loaded
once: `prepare_task` → `train` → `save` for each task, the rest once.

Every rank runs the same command; the launcher sets the ranks, e.g. on CPU:

    GLOO_SOCKET_IFNAME=lo python -m torch.distributed.run --no-python --nproc-per-node 2 \\
        --master-addr 127.0.0.1 --master-port 29500 python -m fedhpc worker --task task.json

`mode: init` builds the seeded base model and adapters and publishes their
trainable state as the round-0 global (one rank is enough). `mode: train`
applies the staged global, trains `local_steps` steps on this facility's data
and publishes the update. Rank 0 alone logs, rewrites the progress file and
writes the output. The exit status is the result the server sees: 0 means the
output directory is published; anything else means it is not.

With ``--store JSON`` (a facility on the proxystore mover) the task's files
travel through that store (`fedhpc.worker.store`): every rank fetches the task
(a few KB, read before the process group exists) and each node's first rank the
global into the mover's ``facility_dir`` before they are read, and rank 0
publishes its progress and the update after writing them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn
from transformers import PreTrainedTokenizerBase, set_seed
from transformers.utils.logging import disable_progress_bar

from fedhpc.config import ModelConfig
from fedhpc.errors import ConfigError, ExchangeError, FedhpcError, ModelError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, Manifest, WorkerTask, dtype_from_name, write_state_dict
from fedhpc.exchange.sharded import prepare_sharded, publish_sharded, write_rank_part
from fedhpc.lifeline import follow_parent
from fedhpc.worker.compiled import compile_decoder_layers, keep_compiled_kernels, wants_compile
from fedhpc.worker.data import GPU_LENGTH_MULTIPLE, batches, read_examples, shard_indices
from fedhpc.worker.distributed import (
    RankEnv,
    barrier,
    destroy_process_group,
    init_process_group,
    rank_env,
    resolve_device,
)
from fedhpc.worker.fsdp import (
    all_ranks_agree,
    apply_global_rows,
    build_sharded_model,
    compute_dtype,
    delta_from,
    sharded_parts,
    uses_fsdp,
)
from fedhpc.worker.initial_global import streams_from_checkpoint, write_initial_global
from fedhpc.worker.loss import CausalLMLoss
from fedhpc.worker.model import add_trainable, apply_global, build_base_model, extract_trainable
from fedhpc.worker.store import FacilityStore
from fedhpc.worker.train import TrainResult, train_local_steps

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def run_task(task_path: Path | str, store: str | None = None) -> None:
    """Run one task on this rank; on any failure log it and exit with status 1.

    `store`: the ``--store`` JSON of a proxystore mover, through which the task's files travel.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    follow_parent()  # a rank started by a local launcher dies with its torchrun
    env = RankEnv()
    try:
        env = rank_env()
        # Rank 0 speaks for the job; the others only report their own failures.
        logging.getLogger("fedhpc").setLevel(logging.INFO if env.is_main else logging.ERROR)
        execute_task(Path(task_path), env, FacilityStore.from_json(store) if store is not None else None)
    except FedhpcError as e:  # an expected failure: its message says what to fix
        logger.error("rank %d of %d: task %s failed: %s", env.rank, env.world_size, task_path, e)
        raise SystemExit(1) from e
    except Exception as e:
        logger.exception("rank %d of %d: task %s failed: %s", env.rank, env.world_size, task_path, e)
        raise SystemExit(1) from e


def execute_task(task_path: Path, env: RankEnv, store: FacilityStore | None = None) -> None:
    """The recipe, top to bottom; raises on failure (`run_task` turns that into the exit status).

    The simulated launcher calls this in the server's process, where exiting or
    reconfiguring logging would hit the server itself.
    """
    disable_progress_bar()  # per-tensor loading bars from every rank would drown the job log
    if store is not None:  # every rank: the task names the device, which the process group needs first
        store.fetch(task_path.parent)
    task = read_task(task_path)
    if task.mode == "init" and streams_from_checkpoint(task.model):
        manifest = write_initial_global(task)
        logger.info("wrote %s: %d tensors streamed from the checkpoint", task.update_dir, len(manifest.tensors))
        return  # the server runs init itself, never through a store
    recipe = RoundRecipe(task, env, store=store)
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


@dataclass
class LoadedModel:
    """The base model with its adapters, built once per job (once per allocation for a persistent worker)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    config: ModelConfig  # what it was built from: a task with another model section needs a rebuild
    seconds: float  # wall time of the build
    loss: CausalLMLoss  # the module training calls: the model inside a chunked loss (FSDP's root when sharded)
    sharded: bool = False  # FSDP: each rank holds its rows of every parameter (`fedhpc.worker.fsdp`)
    optimizer: torch.optim.Optimizer | None = None  # kept between tasks with model.keep_optimizer_state


def load_model(config: ModelConfig, env: RankEnv = RankEnv(), device: torch.device | None = None) -> LoadedModel:
    """Build (or load) the base model and add the trainable adapters, seeded: the same at every facility.

    Full fine-tuning on several ranks is sharded with FSDP as it loads, so no
    rank holds the whole model (`uses_fsdp`).
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    if uses_fsdp(config, env):
        sharded = build_sharded_model(config, env, device)
        base, model, loss = sharded.base, sharded.base.model, sharded.loss
    else:
        base = build_base_model(config)
        model = add_trainable(base.model, config)
        loss = CausalLMLoss(model)
    if wants_compile(config.compile, device):
        keep_compiled_kernels(config.cache_dir)
        compile_decoder_layers(model)
    return LoadedModel(
        model, base.tokenizer, base.fingerprint, config, time.perf_counter() - start, loss, uses_fsdp(config, env)
    )


def training_dtype(model: ModelConfig, device: torch.device) -> torch.dtype:
    """The dtype forward and backward run in (bf16 means autocast on GPUs).

    Full fine-tuning: `model.full.compute_dtype`, bf16 on GPUs by default over fp32
    master weights, on one rank as under FSDP. LoRA: the base model's `model.dtype`.
    """
    return compute_dtype(model.full, device) if model.peft == "none" else dtype_from_name(model.dtype)


class RoundRecipe:
    """One task on one rank. Attributes set in `setup` are used by the later phases.

    `loaded`: a base model already built from `task.model` (a persistent worker's);
    `prepare_task` overwrites every trainable tensor with the global, so nothing of
    an earlier task survives in it, and `train` starts a fresh optimizer.
    `store`: where the global comes from and the update and progress go (a proxystore mover's).
    """

    def __init__(
        self, task: WorkerTask, env: RankEnv, loaded: LoadedModel | None = None, store: FacilityStore | None = None
    ):
        if task.mode == "train":
            for key in ("global_dir", "data", "train"):
                if getattr(task, key) is None:
                    raise ConfigError(f"mode 'train' needs {key!r}", key=key)
        if loaded is not None and loaded.config != task.model:
            raise ModelError("the loaded base model was built from another model section than the task's")
        self.task = task
        self.env = env
        self.device = resolve_device(task.device, env)
        self.local_steps = task.train.local_steps if task.train is not None else 0
        self.loaded = loaded
        self.store = store
        self.loaded_here = False  # whether `load_base` built the model (its time then counts in load_seconds)
        self.result: TrainResult | None = None

    def setup(self) -> None:
        """Join the job, build base model + adapters, apply the global, read this rank's data shard."""
        init_process_group(self.env, self.device)
        self.fetch_global()
        self.load_base()
        self.prepare_task()

    def fetch_global(self) -> None:
        """With a store: each node's first rank fetches the global, the others wait for it.

        One fetch per node, not per job, so a ``facility_dir`` on node-local disk works too;
        nodes that share it race for one rename, and the losers find the same files in place.
        """
        if self.store is None or self.task.global_dir is None:
            return
        if self.env.local_rank == 0:
            self.store.fetch(self.task.global_dir)
        barrier()

    def load_base(self) -> None:
        """Build base model + adapters, unless the recipe was given them."""
        if self.loaded is None:
            self._progress("loading")
            self.loaded = load_model(self.task.model, self.env, self.device)
            self.loaded_here = True

    def prepare_task(self) -> None:
        """Apply the global and read this rank's data shard.

        `load_seconds` (reported in the update) is the time spent here plus the base
        model's build when this recipe built it, i.e. everything before training.
        """
        task, env, loaded = self.task, self.env, self.loaded
        assert loaded is not None, "load_base first"
        start = time.perf_counter()
        self._progress("loading")
        logger.info(
            "round %d at %s: %s on %d rank(s), device %s", task.round, task.facility, task.mode, env.world_size,
            self.device,
        )
        self.model = loaded.model
        self.fingerprint = loaded.fingerprint
        if task.mode == "train":
            assert task.global_dir is not None and task.data is not None and task.train is not None
            global_ = ExchangeDir(task.global_dir)
            try:
                # Once per job: a bad global fails rank 0, and torchrun stops the rest (a persistent
                # worker's ranks instead agree to skip the task).
                if env.is_main:
                    global_.verify(fingerprint=loaded.fingerprint)
                if loaded.sharded:
                    apply_global_rows(self.model, global_)
                else:
                    apply_global(self.model, global_)
                self.based_on_round = global_.manifest.round
            finally:
                global_.close()
            examples = read_examples(task.data)
            self.num_samples = len(examples)
            shard = [examples[i] for i in shard_indices(len(examples), env.rank, env.world_size, task.train.seed)]
            multiple = GPU_LENGTH_MULTIPLE if self.device.type == "cuda" else 1
            self.batches = batches(shard, loaded.tokenizer, task.data_config, task.train.batch_size, multiple)
            logger.info("%d examples at this facility, %d on rank 0", len(examples), len(shard))
        built_here = loaded.seconds if self.loaded_here else 0.0
        self.load_seconds = built_here + time.perf_counter() - start

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
        loaded = self.loaded
        assert loaded is not None
        keep = self.task.model.keep_optimizer_state
        dtype = training_dtype(self.task.model, self.device)
        self.result = train_local_steps(
            self.model, self.batches, settings, self.device, self.env, dtype, on_step, loss=loaded.loss,
            sharded=loaded.sharded, optimizer=loaded.optimizer if keep else None,
        )  # fmt: skip
        loaded.optimizer = self.result.optimizer if keep else None

    def save(self) -> None:
        """Publish the trainable state (atomically, manifest last): rank 0 alone, or every FSDP rank its rows."""
        last_loss = self.result.losses[-1] if self.result else None
        if self.env.is_main:
            self._progress("saving", step=self.local_steps, loss=last_loss)
        assert self.loaded is not None
        if self.loaded.sharded and self.result is not None:
            manifest = self._save_sharded()
        elif self.env.is_main:
            manifest = self._save_whole()
        else:
            return
        if self.env.is_main:
            logger.info("wrote %s: %d tensors", self.task.update_dir, len(manifest.tensors))
            if self.store is not None:
                self.store.publish(self.task.update_dir)
            self._progress("done", step=self.local_steps, loss=last_loss)

    def _meta(self) -> ExchangeMeta:
        task = self.task
        if self.result is None:  # init: the round-0 global, an fp32 master copy
            return ExchangeMeta(
                kind="global",
                round=0,
                base_fingerprint=self.fingerprint,
                metrics={"load_seconds": self.load_seconds, "device": self.device.type},
            )
        return ExchangeMeta(
            kind="update",
            round=task.round,
            facility=task.facility,
            based_on_round=self.based_on_round,
            num_samples=self.num_samples,
            local_steps=self.local_steps,
            base_fingerprint=self.fingerprint,
            update_form=task.update_form,
            metrics={
                "loss": self.result.losses,
                "tokens": self.result.tokens,
                "samples_seen": self.result.samples_seen,
                "train_seconds": self.result.seconds,
                "load_seconds": self.load_seconds,
                "world_size": self.env.world_size,
                "device": self.device.type,
                "sharded": bool(self.loaded and self.loaded.sharded),
            },
        )

    def _save_whole(self) -> Manifest:
        task = self.task
        if self.result is None:
            return write_state_dict(
                task.update_dir, extract_trainable(self.model, torch.float32), self._meta(), task.shard_bytes
            )
        dtype = dtype_from_name(task.update_dtype)
        state = extract_trainable(self.model, torch.float32 if task.update_form == "delta" else dtype)
        if task.update_form == "delta":
            assert task.global_dir is not None
            global_ = ExchangeDir(task.global_dir)
            try:
                state = {name: (value - global_.get(name).float()).to(dtype) for name, value in state.items()}
            finally:
                global_.close()
        return write_state_dict(task.update_dir, state, self._meta(), shard_bytes=task.shard_bytes)

    def _save_sharded(self) -> Manifest | None:
        """Every rank writes its rows; rank 0 writes the manifest once all ranks have (`fedhpc.exchange.sharded`).

        The ranks agree after each step (an all-reduce), so a rank that fails to
        write makes every rank raise instead of leaving the others in a barrier.
        """
        task, env = self.task, self.env
        dest = task.update_dir
        if env.is_main:
            prepare_sharded(dest)
        barrier()
        ok, error = True, ""
        global_: ExchangeDir | None = None
        try:
            parts = list(sharded_parts(self.model, env.is_main))
            if task.update_form == "delta":
                assert task.global_dir is not None
                global_ = ExchangeDir(task.global_dir)
            delta = delta_from(global_) if global_ is not None else None
            write_rank_part(dest, env.rank, env.world_size, parts, dtype_from_name(task.update_dtype), delta)
        except (OSError, FedhpcError) as e:
            ok, error = False, str(e)
        finally:
            if global_ is not None:
                global_.close()
        if not all_ranks_agree(ok, self.device):
            raise ExchangeError(f"writing the sharded update failed on rank {env.rank}: {error}" if error
                                else "another rank failed to write its part of the sharded update; see its log")
        if env.is_main:
            return publish_sharded(dest, env.world_size, self._meta(), dtype_from_name(task.update_dtype))
        return None

    def cleanup(self) -> None:
        """Hold every rank until rank 0 has published, then leave the process group."""
        barrier()
        destroy_process_group()

    def _progress(self, phase: str, step: int = 0, loss: float | None = None) -> None:
        if self.env.is_main and self.task.progress_file is not None:
            write_progress(self.task.progress_file, self.task.round, step, self.local_steps, loss, phase)
            if self.store is not None:
                self.store.publish_progress(self.task.progress_file, phase)


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
