"""Full fine-tuning sharded over the job's ranks with FSDP2, loaded and saved without a full copy.

FSDP2 (`torch.distributed.fsdp.fully_shard`, one unit per decoder layer plus
the root) keeps rows [start, stop) of every parameter on each rank (dim-0
shards, `torch.chunk` sizes) and all-gathers one layer at a time for compute.
Per GPU that is 1/N of the fp32 master weights, gradients and AdamW moments
instead of all of them, which is what lets a 7B model train on 40 GB GPUs.

Nothing here ever materialises the whole model on one rank:

- loading: the model is built on the meta device (no memory), sharded, then
  given empty local storage; each rank reads only its rows of each tensor from
  the base checkpoint (`CheckpointRows`) and then from the staged global
  (`ExchangeDir.get_rows`);
- saving: each rank writes its own rows (`fedhpc.exchange.sharded`).

The tiny seeded model is the exception on the loading side: its weights exist
only as the output of a seeded build, so each rank builds it whole (it is tiny)
and keeps its rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from fedhpc.config import FullFinetuneConfig, ModelConfig
from fedhpc.errors import ModelError
from fedhpc.exchange import ExchangeDir, dtype_from_name
from fedhpc.exchange.safetensors_stream import ShardReader
from fedhpc.exchange.sharded import RowPart
from fedhpc.worker.device import is_accelerator
from fedhpc.worker.distributed import RankEnv
from fedhpc.worker.loss import CausalLMLoss
from fedhpc.worker.model import TINY_LLAMA, BaseModel, build_base_model, check_global_names

# (tensor name, first row, row after the last) -> those rows; (name, None, None) -> the whole tensor
RowSource = Callable[[str, int | None, int | None], torch.Tensor]


def uses_fsdp(config: ModelConfig, env: RankEnv) -> bool:
    """FSDP for full fine-tuning on more than one rank, unless `model.full.sharding` asks for DDP."""
    return config.peft == "none" and env.distributed and config.full.sharding != "ddp"


def row_range(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows of a dim-0 shard that FSDP2 gives `rank`: `torch.chunk` sizes, the last ranks possibly empty."""
    chunk = -(-rows // world_size)
    start = min(rank * chunk, rows)
    return start, min(start + chunk, rows)


def compute_dtype(full: FullFinetuneConfig, device: torch.device) -> torch.dtype:
    """auto: bf16 on every accelerator (A100, MI250X and Max 1550 all have bf16 matrix units), fp32 on the CPU."""
    if full.compute_dtype == "auto":
        return torch.bfloat16 if is_accelerator(device) else torch.float32
    return dtype_from_name(full.compute_dtype)


@dataclass(frozen=True)
class ShardedModel:
    """The sharded base model and the loss module FSDP wraps it in (the one to call for training)."""

    base: BaseModel
    loss: CausalLMLoss


def build_sharded_model(config: ModelConfig, env: RankEnv, device: torch.device) -> ShardedModel:
    """The base model, every weight trainable, sharded over the job's ranks; only this rank's rows in memory."""
    if config.full.cpu_offload and not is_accelerator(device):
        raise ModelError(
            "model.full.cpu_offload moves GPU state to host memory between uses, but this job runs on the CPU, "
            "where everything is in host memory already; remove it, or run the facility on GPUs "
            "(device: cuda, rocm or xpu)"
        )
    if config.source == TINY_LLAMA:
        base = build_base_model(config)
        state = base.model.state_dict()
        architecture, tokenizer, fingerprint = base.model.config, base.tokenizer, base.fingerprint
        del base

        def rows(name: str, start: int | None, stop: int | None) -> torch.Tensor:
            return state[name] if start is None else state[name][start:stop]
    else:
        from fedhpc.worker.pretrained import fingerprint_model_dir, resolve_pretrained

        path = resolve_pretrained(config.source, config.cache_dir, config.revision)
        try:
            architecture = AutoConfig.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the model in {path} (from model.source {config.source!r}): {e}") from e
        fingerprint = fingerprint_model_dir(path)
        rows = CheckpointRows(path)
    dtype = dtype_from_name(config.dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture, dtype=dtype)
    model.requires_grad_(True)
    loss = CausalLMLoss(model)
    shard_model(model, loss, config.full, env, device)
    model.to_empty(device="cpu" if config.full.cpu_offload else device)
    with torch.no_grad():
        fill_local_rows(model, rows)
    restore_rotary_buffers(model, "cpu" if config.full.cpu_offload else device)
    return ShardedModel(BaseModel(model, tokenizer, fingerprint), loss)


def shard_model(
    model: PreTrainedModel, loss: CausalLMLoss, full: FullFinetuneConfig, env: RankEnv, device: torch.device
) -> None:
    """Activation checkpointing per decoder layer, then `fully_shard` per layer and on `loss` as the root.

    Per layer, so the all-gather of layer k+1 overlaps the compute of layer k and
    at most a couple of layers are ever whole at once. The root is the loss module
    around the model, so the embedding, final norm and lm_head are gathered for its
    forward, which computes the chunked loss (`fedhpc.worker.loss`).
    """
    if full.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    mesh = init_device_mesh(device.type, (env.world_size,))
    compute = compute_dtype(full, device)
    policy = MixedPrecisionPolicy(
        param_dtype=compute if compute != next(model.parameters()).dtype else None,
        reduce_dtype=dtype_from_name(full.reduce_dtype),
    )
    options: dict = {"mesh": mesh, "mp_policy": policy}
    if full.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    fully_shard(loss, **options)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a causal LM (``model.layers`` in Llama-family models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ModelError(
            f"{type(model).__name__} has no model.layers to shard; FSDP full fine-tuning supports Llama-family "
            "decoder models (set model.full.sharding: ddp for others)"
        )
    return list(layers)


def local_rows(parameter: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """This rank's storage of `parameter` and its first row (None: not sharded, the whole tensor)."""
    if isinstance(parameter, DTensor):
        local = parameter.to_local()
        rank = parameter.device_mesh.get_local_rank()
        start, stop = row_range(parameter.shape[0], rank, parameter.device_mesh.size())
        if local.shape[0] != stop - start:
            raise ModelError(f"FSDP shard of {list(parameter.shape)} has {local.shape[0]} rows, expected {stop - start}")
        return local, start
    return parameter, None


def fill_local_rows(model: nn.Module, rows: RowSource) -> None:
    """Copy this rank's rows of every parameter from `rows` (cast to the parameter's dtype)."""
    for name, parameter in model.named_parameters():
        local, start = local_rows(parameter.data)
        if start is None:
            local.copy_(rows(name, None, None))
        elif local.shape[0]:
            local.copy_(rows(name, start, start + local.shape[0]))


def apply_global_rows(model: nn.Module, source: ExchangeDir) -> None:
    """Overwrite this rank's rows of every parameter with the global's, reading only those rows."""
    check_global_names({name for name, _ in model.named_parameters()}, source)
    with torch.no_grad():
        fill_local_rows(model, global_rows(source))


def global_rows(source: ExchangeDir) -> RowSource:
    def rows(name: str, start: int | None, stop: int | None) -> torch.Tensor:
        return source.get(name) if start is None else source.get_rows(name, start, stop)

    return rows


def sharded_parts(model: nn.Module, is_main: bool) -> Iterator[RowPart]:
    """This rank's rows of every parameter, as the exchange's parts; unsharded ones from rank 0 only."""
    for name, parameter in model.named_parameters():
        local, start = local_rows(parameter.data)
        if start is not None or is_main:
            yield RowPart(name, tuple(parameter.shape), start, local)


def delta_from(global_: ExchangeDir) -> Callable[[RowPart], torch.Tensor]:
    """A part's rows minus the same rows of the global it was trained from, in fp32."""

    def delta(part: RowPart) -> torch.Tensor:
        if part.start is None:
            base = global_.get(part.name)
        else:
            base = global_.get_rows(part.name, part.start, part.start + part.tensor.shape[0])
        return part.tensor.detach().float() - base.to(part.tensor.device).float()

    return delta


def restore_rotary_buffers(model: nn.Module, device: torch.device | str) -> None:
    """Recompute the rotary-embedding tables `to_empty` left uninitialised.

    They are not in any checkpoint (non-persistent buffers): the model computes
    them from its config when built normally, which the meta device skipped.
    """
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if name in ("inv_freq", "original_inv_freq"):
                with torch.device("cpu"):
                    fresh = type(module)(config=model.config)
                module.register_buffer(name, getattr(fresh, name).to(device, buffer.dtype), persistent=False)


class CheckpointRows:
    """Rows of a tensor from a Hugging Face model directory's safetensors files, reading only those rows.

    The files are opened once each; `ShardReader` reads by `preadv`, so a rank
    loading a 1/N shard of a 7B model reads 1/N of the bytes and maps nothing.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._files: dict[str, ShardReader] = {}
        self._where = self._index()

    def _index(self) -> dict[str, str]:
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            return dict(json.loads(index.read_text())["weight_map"])
        where: dict[str, str] = {}
        for file in sorted(self.directory.glob("*.safetensors")):
            where.update({name: file.name for name in self._reader(file.name).keys()})
        return where

    def _reader(self, file_name: str) -> ShardReader:
        if file_name not in self._files:
            self._files[file_name] = ShardReader(self.directory / file_name)
        return self._files[file_name]

    def __call__(self, name: str, start: int | None, stop: int | None) -> torch.Tensor:
        file_name = self._where.get(name)
        if file_name is None:
            raise ModelError(f"{self.directory} has no tensor {name!r}; it does not hold this architecture's weights")
        reader = self._reader(file_name)
        if start is None or stop is None:
            return reader.read(name)
        shape = reader.shape(name)
        out = torch.empty([stop - start, *shape[1:]], dtype=dtype_from_name(reader.dtype_name(name)))
        reader.read_rows(name, start, out)
        return out


def all_ranks_agree(ok: bool, device: torch.device) -> bool:
    """True when `ok` holds on every rank (one small all-reduce), so all ranks take the same branch."""
    if not dist.is_initialized():
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return int(flag.item()) == 0
