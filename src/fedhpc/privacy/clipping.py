"""Updates' L2 distances from their bases over all trainable tensors together, and the factor that clips them.

DP-FedAvg bounds each facility's whole contribution (McMahan et al., 2018), so the norm is taken over
every tensor jointly, not per tensor. It is one streaming pass, tensor name by tensor name: a base shared
by several updates (the round's global, for every fresh update) is read once per name, then each update's
tensor in turn; their difference is taken in fp32 a chunk at a time (the 16 MiB chunk of
`aggregate/streaming.py`, into buffers reused for every chunk), its squares summed in float64 so a model
of billions of small entries does not lose the tail of the sum.
"""

from __future__ import annotations

import math

import torch

from fedhpc.aggregate.base import TensorSource
from fedhpc.aggregate.streaming import CAST_CHUNK


def delta_norm(update_source: TensorSource, base_source: TensorSource, names: list[str]) -> float:
    """‖update − base‖₂ over the tensors `names`, jointly; neither source is modified."""
    return delta_norms([(update_source, base_source)], names)[0]


def delta_norms(pairs: list[tuple[TensorSource, TensorSource]], names: list[str]) -> list[float]:
    """‖update − base‖₂ for each (update, base) pair, reading each distinct base once per tensor."""
    squares = [0.0] * len(pairs)
    difference = torch.empty(CAST_CHUNK, dtype=torch.float32)  # reused: no chunk-sized allocation per chunk
    wide = torch.empty(CAST_CHUNK, dtype=torch.float64)
    for name in names:
        read: dict[int, torch.Tensor] = {}  # this tensor of each base, by the base's identity
        for index, (update_source, base_source) in enumerate(pairs):
            if id(base_source) not in read:
                read[id(base_source)] = base_source.get(name)
            update, base = update_source.get(name), read[id(base_source)]
            if update.shape != base.shape:
                raise ValueError(f"{name!r} has shape {list(update.shape)} in the update, {list(base.shape)} in its base")
            flat_update, flat_base = update.reshape(-1), base.reshape(-1)
            for start in range(0, flat_update.numel(), CAST_CHUNK):
                stop = min(start + CAST_CHUNK, flat_update.numel())
                chunk, chunk_wide = difference[: stop - start], wide[: stop - start]
                subtract_into(chunk, flat_update[start:stop], flat_base[start:stop])
                chunk_wide.copy_(chunk)
                squares[index] += float(torch.dot(chunk_wide, chunk_wide))
            del update, base, flat_update, flat_base
        del read
    return [math.sqrt(total) for total in squares]


def subtract_into(out: torch.Tensor, minuend: torch.Tensor, subtrahend: torch.Tensor) -> torch.Tensor:
    """out = minuend − subtrahend in fp32, whatever their dtypes (both cast before subtracting, not after)."""
    if minuend.dtype == subtrahend.dtype == torch.float32:
        return torch.sub(minuend, subtrahend, out=out)
    return out.copy_(minuend).sub_(subtrahend)


def clip_factor(norm: float, clip_norm: float) -> float:
    """min(1, C/‖Δ‖): the scale that brings a change of norm `norm` within `clip_norm`; 1 leaves it untouched."""
    if norm <= clip_norm:
        return 1.0
    return clip_norm / norm
