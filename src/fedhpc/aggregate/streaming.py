"""The streaming reduction every averaging algorithm shares.

One tensor name at a time: read that tensor from each update in turn, add it
into a single fp32 accumulator, drop it. Peak memory is the accumulator plus
one update tensor, whatever the number of facilities; bf16 or fp16 inputs are
accumulated in fp32 so small contributions are not rounded away.
"""

from __future__ import annotations

import torch

from fedhpc.aggregate.base import Update


def weighted_mean(name: str, updates: list[Update], weights: list[float]) -> torch.Tensor:
    """Σ_k weights[k] · updates[k][name], in fp32."""
    accumulator: torch.Tensor | None = None
    for weight, update in zip(weights, updates, strict=True):
        tensor = update.source.get(name)
        if accumulator is None:
            accumulator = tensor.to(torch.float32).mul_(weight)
        else:
            accumulator.add_(tensor.to(torch.float32), alpha=weight)
        del tensor
    assert accumulator is not None, "weighted_mean needs at least one update"
    return accumulator
