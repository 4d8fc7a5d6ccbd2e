"""The base model a job builds once, in one of two states: whole on every rank, or sharded by FSDP.

The two states differ in exactly two places, so each keeps its own version of
both and the recipes (`fedhpc.worker.train_recipe`) never ask which one they hold:

- applying a global: `LoadedWhole` overwrites the trainable tensors with the
  global's; `LoadedSharded` reads only this rank's rows of each (`fedhpc.worker.fsdp`);
- writing the update: `LoadedWhole` has rank 0 write the whole state dict;
  `LoadedSharded` has every rank write its rows and rank 0 the manifest
  (`fedhpc.exchange.sharded`).

Full fine-tuning on several ranks is sharded as it loads (`uses_fsdp`); anything
else is whole, and the training loop wraps it in DDP on several ranks.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedhpc.config import ModelConfig
from fedhpc.errors import ExchangeError, FedhpcError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, Manifest, WorkerTask, dtype_from_name, write_state_dict
from fedhpc.exchange.sharded import prepare_sharded, publish_sharded, write_rank_part
from fedhpc.worker.compiled import compile_decoder_layers, keep_compiled_kernels, wants_compile
from fedhpc.worker.distributed import RankEnv, barrier
from fedhpc.worker.error_feedback import write_compressed_update
from fedhpc.worker.fsdp import (
    all_ranks_agree,
    apply_global_rows,
    build_sharded_model,
    compute_dtype,
    delta_from,
    sharded_parts,
    uses_fsdp,
)
from fedhpc.worker.loss import CausalLMLoss
from fedhpc.worker.model import add_trainable, apply_global, build_base_model, extract_trainable


@dataclass
class LoadedModel(ABC):
    """The base model with its adapters, built once per job (once per allocation for a persistent worker)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    config: ModelConfig  # what it was built from: a task with another model section needs a rebuild
    seconds: float  # wall time of the build
    loss: CausalLMLoss  # the module training calls: the model inside a chunked loss (FSDP's root when sharded)
    optimizer: torch.optim.Optimizer | None = None  # kept between tasks with model.keep_optimizer_state
    sharded: ClassVar[bool]  # FSDP: each rank holds its rows of every parameter (`fedhpc.worker.fsdp`)

    @abstractmethod
    def apply_global(self, global_: ExchangeDir) -> None:
        """Overwrite every trainable tensor with the global's."""

    @abstractmethod
    def write_update(self, task: WorkerTask, meta: ExchangeMeta, env: RankEnv, device: torch.device) -> Manifest | None:
        """Publish the trained state into `task.update_dir` (atomically, manifest last); rank 0 gets the manifest."""


class LoadedWhole(LoadedModel):
    """Every rank holds the whole model; rank 0 alone writes the update."""

    sharded = False

    def apply_global(self, global_: ExchangeDir) -> None:
        apply_global(self.model, global_)

    def write_update(self, task: WorkerTask, meta: ExchangeMeta, env: RankEnv, device: torch.device) -> Manifest | None:
        if not env.is_main:
            return None
        dtype = dtype_from_name(task.update_dtype)
        state = extract_trainable(self.model, torch.float32 if task.update_form == "delta" else dtype)
        if task.update_form == "delta":
            assert task.global_dir is not None
            global_ = ExchangeDir(task.global_dir)
            try:
                # a codec encodes the fp32 delta itself (`update_dtype` is what uncompressed updates carry)
                cast = torch.float32 if task.compression.enabled else dtype
                state = {name: (value - global_.get(name).float()).to(cast) for name, value in state.items()}
            finally:
                global_.close()
        if task.compression.enabled:
            return write_compressed_update(task, state, meta)
        return write_state_dict(task.update_dir, state, meta, shard_bytes=task.shard_bytes)


class LoadedSharded(LoadedModel):
    """Each rank holds its rows of every parameter (FSDP2); no rank ever holds the whole model."""

    sharded = True

    def apply_global(self, global_: ExchangeDir) -> None:
        apply_global_rows(self.model, global_)

    def write_update(self, task: WorkerTask, meta: ExchangeMeta, env: RankEnv, device: torch.device) -> Manifest | None:
        """Every rank writes its rows; rank 0 writes the manifest once all ranks have (`fedhpc.exchange.sharded`).

        The ranks agree after each step (an all-reduce), so a rank that fails to
        write makes every rank raise instead of leaving the others in a barrier.
        """
        dest = task.update_dir
        if task.compression.enabled:  # the config refuses this; a task written by hand gets the same answer
            raise ExchangeError(f"codec {task.compression.codec!r} cannot compress a sharded (FSDP) update: compressed "
                                "updates are written whole by one rank")
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
        if not all_ranks_agree(ok, device):
            raise ExchangeError(f"writing the sharded update failed on rank {env.rank}: {error}" if error
                                else "another rank failed to write its part of the sharded update; see its log")
        if env.is_main:
            return publish_sharded(dest, env.world_size, meta, dtype_from_name(task.update_dtype))
        return None


def load_model(config: ModelConfig, env: RankEnv = RankEnv(), device: torch.device | None = None) -> LoadedModel:
    """Build (or load) the base model and add the trainable adapters, seeded: the same at every facility.

    Full fine-tuning on several ranks is sharded with FSDP as it loads, so no
    rank holds the whole model (`uses_fsdp`).
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    state: type[LoadedModel]
    if uses_fsdp(config, env):
        sharded = build_sharded_model(config, env, device)
        base, model, loss, state = sharded.base, sharded.base.model, sharded.loss, LoadedSharded
    else:
        base = build_base_model(config)
        model = add_trainable(base.model, config)
        loss, state = CausalLMLoss(model), LoadedWhole
    if wants_compile(config.compile, device):
        keep_compiled_kernels(config.cache_dir)
        compile_decoder_layers(model)
    return state(model, base.tokenizer, base.fingerprint, config, time.perf_counter() - start, loss)


def training_dtype(model: ModelConfig, device: torch.device) -> torch.dtype:
    """The dtype forward and backward run in (bf16 means autocast on GPUs).

    Full fine-tuning: `model.full.compute_dtype`, bf16 on GPUs by default over fp32
    master weights, on one rank as under FSDP. LoRA: the base model's `model.dtype`.
    """
    return compute_dtype(model.full, device) if model.peft == "none" else dtype_from_name(model.dtype)
