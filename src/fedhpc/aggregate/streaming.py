"""The streaming reduction every averaging algorithm shares.

One tensor name at a time: read that tensor from each update in turn, add it
into a single fp32 accumulator, drop it. bf16 or fp16 inputs are accumulated
in fp32 so small contributions are not rounded away; the cast happens a chunk
at a time, so peak memory is the accumulator, one update tensor and one fp32
chunk (16 MiB), whatever the number of facilities.
"""

from __future__ import annotations

import torch

from fedhpc.aggregate.base import Update

CAST_CHUNK = 1 << 22  # elements cast to fp32 at once: a 16 MiB temporary instead of a tensor-sized one


def weighted_mean(name: str, updates: list[Update], weights: list[float]) -> torch.Tensor:
    """Σ_k weights[k] · updates[k][name], in fp32; the update tensors are not modified."""
    accumulator: torch.Tensor | None = None
    for weight, update in zip(weights, updates, strict=True):
        tensor = update.source.get(name)
        if accumulator is None:
            accumulator = torch.zeros(tensor.shape, dtype=torch.float32)
        elif tensor.shape != accumulator.shape:
            raise ValueError(
                f"{name!r} from {update.facility} has shape {list(tensor.shape)}, expected {list(accumulator.shape)}"
            )
        source, target = tensor.reshape(-1), accumulator.view(-1)
        for start in range(0, source.numel(), CAST_CHUNK):
            target[start : start + CAST_CHUNK].add_(source[start : start + CAST_CHUNK], alpha=weight)
        del tensor, source
    assert accumulator is not None, "weighted_mean needs at least one update"
    return accumulator
