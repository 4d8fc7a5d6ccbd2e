"""A full model's weights as transformers saves them: sharded safetensors and `model.safetensors.index.json`.

Tensors arrive one at a time, in the declared order, and each is written as it
arrives (`StreamingShardWriter`), so writing costs one tensor of memory however
large the model. The index is written even for one shard, so every export
reads the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from fedhpc.errors import ExchangeError
from fedhpc.exchange import TensorLayout
from fedhpc.exchange.safetensors_stream import StreamingShardWriter
from fedhpc.exchange.writer import plan_shards, shard_file_name

INDEX_NAME = "model.safetensors.index.json"


def write_sharded(
    out: Path, layout: list[TensorLayout], tensors: Iterable[tuple[str, torch.Tensor]], shard_bytes: int
) -> int:
    """Write `tensors` (in `layout` order, already in their layout's dtype) into `out`; return the bytes of weights."""
    shards = plan_shards(layout, shard_bytes)
    weight_map: dict[str, str] = {}
    stream = iter(tensors)
    for index, shard in enumerate(shards):
        file_name = shard_file_name(index, len(shards))
        with StreamingShardWriter(out / file_name, shard) as writer:
            for item in shard:
                name, tensor = next(stream, (None, None))
                if name is None or tensor is None:
                    raise ExchangeError(f"the weights ended before {item.name!r}")
                writer.write(name, tensor)
                weight_map[name] = file_name
    total = sum(item.nbytes for item in layout)
    index_document = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index_document, indent=2) + "\n")
    return total
