"""An update's L2 distance from its base over all trainable tensors together, and the factor that clips it.

DP-FedAvg bounds each facility's whole contribution (McMahan et al., 2018), so the norm is taken over
every tensor jointly, not per tensor. It is one streaming pass: one tensor of the update and one of its
base at a time, their difference cast to fp32 a chunk at a time (the 16 MiB chunk of
`aggregate/streaming.py`), the squares summed in float64 so a model of billions of small entries does
not lose the tail of the sum.
"""

from __future__ import annotations

import math

import torch

from fedhpc.aggregate.base import TensorSource
from fedhpc.aggregate.streaming import CAST_CHUNK


def delta_norm(update_source: TensorSource, base_source: TensorSource, names: list[str]) -> float:
    """‖update − base‖₂ over the tensors `names`, jointly; neither source is modified."""
    squares = 0.0
    for name in names:
        update, base = update_source.get(name), base_source.get(name)
        if update.shape != base.shape:
            raise ValueError(f"{name!r} has shape {list(update.shape)} in the update, {list(base.shape)} in its base")
        flat_update, flat_base = update.reshape(-1), base.reshape(-1)
        for start in range(0, flat_update.numel(), CAST_CHUNK):
            stop = start + CAST_CHUNK
            difference = flat_update[start:stop].to(torch.float32) - flat_base[start:stop].to(torch.float32)
            squares += float(torch.linalg.vector_norm(difference, dtype=torch.float64)) ** 2
        del update, base, flat_update, flat_base
    return math.sqrt(squares)


def clip_factor(norm: float, clip_norm: float) -> float:
    """min(1, C/‖Δ‖): the scale that brings a change of norm `norm` within `clip_norm`; 1 leaves it untouched."""
    if norm <= clip_norm:
        return 1.0
    return clip_norm / norm
