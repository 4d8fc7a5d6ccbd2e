"""The streaming reduction every linear aggregation rule shares.

One tensor name at a time: read that tensor from each source in turn, add it,
scaled, into a single fp32 accumulator, drop it. bf16 or fp16 inputs are
accumulated in fp32 so small contributions are not rounded away; the cast
happens a chunk at a time, so peak memory is the accumulator, one source
tensor and one fp32 chunk (16 MiB), whatever the number of facilities.

FedAvg is Σ p_k·w_k over the updates; the asynchronous rules are weighted sums
over the global, the updates and (FedBuff) the globals the updates were trained
from, so all of them are `weighted_sum` with different terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedhpc.aggregate.base import TensorSource, Update

CAST_CHUNK = 1 << 22  # elements cast to fp32 at once: a 16 MiB temporary instead of a tensor-sized one

# (label naming the source in errors, e.g. a facility; the source; its weight)
Term = tuple[str, TensorSource, float]


def weighted_sum(name: str, terms: Sequence[Term]) -> torch.Tensor:
    """Σ weight · source[name] over `terms`, in fp32; the first term fixes the shape, no source is modified."""
    accumulator: torch.Tensor | None = None
    for label, origin, weight in terms:
        tensor = origin.get(name)
        if accumulator is None:
            accumulator = torch.zeros(tensor.shape, dtype=torch.float32)
        elif tensor.shape != accumulator.shape:
            raise ValueError(
                f"{name!r} from {label} has shape {list(tensor.shape)}, expected {list(accumulator.shape)}"
            )
        source, target = tensor.reshape(-1), accumulator.view(-1)
        for start in range(0, source.numel(), CAST_CHUNK):
            target[start : start + CAST_CHUNK].add_(source[start : start + CAST_CHUNK], alpha=weight)
        del tensor, source
    if accumulator is None:
        raise ValueError("a weighted sum needs at least one term")
    return accumulator


def weighted_mean(name: str, updates: list[Update], weights: list[float]) -> torch.Tensor:
    """Σ_k weights[k] · updates[k][name], in fp32; the update tensors are not modified."""
    return weighted_sum(
        name, [(update.facility, update.source, weight) for update, weight in zip(updates, weights, strict=True)]
    )
