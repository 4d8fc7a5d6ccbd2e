"""A LoRA global folded into its base: a full transformers directory (`--merge`).

Merged one weight at a time: each base weight is read, its adapter's update
``(alpha / r) * B @ A`` (PEFT's scaling, computed in fp32) added if it has one,
cast to the output dtype and written, so the merge holds one base tensor, its
two adapter factors and the result at once, not a model. (A ``tiny-llama`` base
is built in memory first; see `base.py`.) The adapters are those of the
standard LoRA layer on `nn.Linear`; a layout that does not fit is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from fedhpc.config import ModelConfig
from fedhpc.errors import ModelError
from fedhpc.exchange import ExchangeDir, TensorLayout
from fedhpc.export.base import BaseWeights
from fedhpc.export.shards import write_sharded

PEFT_PREFIX = "base_model.model."
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def write_merged(global_: ExchangeDir, model: ModelConfig, dtype: torch.dtype, out: Path, shard_bytes: int) -> int:
    """Write base + adapters of `global_` into `out` as sharded safetensors in `dtype`; return the bytes."""
    base = BaseWeights(model)
    try:
        _check_fingerprint(global_, base.fingerprint, model.quantize)
        pairs = _adapter_pairs(global_, set(base.names()))
        scaling = model.lora.alpha / model.lora.r
        layout = [TensorLayout(name, dtype, base.layout(name).shape) for name in base.names()]
        return write_sharded(out, layout, _merged(base, global_, pairs, scaling, dtype), shard_bytes)
    finally:
        base.close()


def _merged(
    base: BaseWeights, global_: ExchangeDir, pairs: dict[str, tuple[str, str]], scaling: float, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    for name in base.names():
        weight = base.get(name)
        if name in pairs:
            a_name, b_name = pairs[name]
            a, b = global_.get(a_name).float(), global_.get(b_name).float()
            delta = b @ a
            if delta.shape != weight.shape:
                raise ModelError(f"{global_.path}: the adapter of {name} makes a {list(delta.shape)} update for a "
                                 f"{list(weight.shape)} weight; only LoRA on linear layers merges")
            weight = weight.float() + scaling * delta
        yield name, weight.to(dtype)


def _adapter_pairs(global_: ExchangeDir, base_names: set[str]) -> dict[str, tuple[str, str]]:
    """Base weight name -> (its lora_A, its lora_B) in the global; every adapter must find its weight."""
    pairs = {}
    for name in global_.names():
        if not name.endswith(LORA_A):
            continue
        module = name.removeprefix(PEFT_PREFIX).removesuffix(LORA_A)
        b_name = name.removesuffix(LORA_A) + LORA_B
        if f"{module}.weight" not in base_names or b_name not in global_.manifest.tensors:
            raise ModelError(f"{global_.path}: adapter {name!r} has no base weight {module}.weight (or no lora_B); "
                             "was the global written for this model.source?")
        pairs[f"{module}.weight"] = (name, b_name)
    unpaired = [n for n in global_.names() if not n.endswith((LORA_A, LORA_B))]
    if unpaired or not pairs:
        raise ModelError(f"{global_.path} holds no LoRA adapters to merge ({len(unpaired)} other tensors, e.g. "
                         f"{unpaired[:1]})")
    return pairs


def _check_fingerprint(global_: ExchangeDir, fingerprint: str, quantize: str) -> None:
    """The global must have been trained on these base weights (a quantized run's on the weights it quantized)."""
    trained_on = global_.manifest.base_fingerprint.removeprefix(f"{quantize}:")
    if trained_on != fingerprint:
        raise ModelError(f"{global_.path} was trained on base {trained_on[:19]}…, but the run's model.source now "
                         f"loads {fingerprint[:19]}…; merging would add the adapters to other weights")
