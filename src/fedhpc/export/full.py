"""A full fine-tuning global as a transformers directory: config.json + sharded safetensors with an index.

The global already holds every weight under its `named_parameters` name (the
names `from_pretrained` loads), so nothing is built: each tensor is read from
the exchange shards, cast and written before the next is read. Peak memory is
the largest tensor, twice (as stored and as cast).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedhpc.exchange import ExchangeDir
from fedhpc.export.shards import write_sharded


def write_full(global_: ExchangeDir, dtype: torch.dtype, out: Path, shard_bytes: int) -> int:
    """Write every tensor of `global_` into `out` as sharded safetensors in `dtype`; return the bytes."""
    layout = global_.layout(dtype)
    tensors = ((item.name, global_.get(item.name).to(dtype)) for item in layout)
    return write_sharded(out, layout, tensors, shard_bytes)
