"""What every update codec is: encode a tensor into named stored tensors + JSON params, decode them back.

A facility's update is untrusted input, so `decode` is also the check: it raises
`CodecError` (wrapped into `UpdateRejected` by the reader, naming the tensor) on
anything a correct encoder cannot have written (a scale that is NaN, a top-k index
out of range or repeated), never returns a wrong tensor silently.
`expected_parts` says what an encoder writes for a shape and params, so the
verifier can compare the manifest and the file headers with it before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedhpc.errors import CodecError

Params = dict[str, int | float]


@dataclass(frozen=True)
class PartSpec:
    """The dtype and shape one stored part must have."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Encoded:
    """A tensor as its codec stores it: named parts (CPU, contiguous) and the params decoding needs."""

    parts: dict[str, torch.Tensor]
    params: Params


class Codec(Protocol):
    name: str
    lossy: bool

    def params_for(self, shape: tuple[int, ...]) -> Params:
        """The params `encode` records for a tensor of `shape` (known before encoding: the writer's layout)."""
        ...

    def encode(self, tensor: torch.Tensor) -> Encoded: ...

    def expected_parts(self, shape: tuple[int, ...], params: Params) -> dict[str, PartSpec]:
        """The parts an encoder writes for a tensor of `shape`; raises `CodecError` on insane params."""
        ...

    def decode(self, parts: dict[str, torch.Tensor], params: Params, shape: tuple[int, ...]) -> torch.Tensor:
        """The fp32 tensor of `shape`; raises `CodecError` on parts no encoder writes."""
        ...


def numel_of(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def int_param(params: Params, key: str, low: int, high: int) -> int:
    """`params[key]` as an int in [low, high], or a `CodecError` naming the key."""
    value = params.get(key)
    if type(value) is not int or not low <= value <= high:
        raise CodecError(f"parameter {key!r} is {value!r}; expected an integer in [{low}, {high}]")
    return value


def check_scales(scales: torch.Tensor) -> None:
    """Per-block scales must be finite and non-negative: anything else is no encoder's output."""
    if scales.numel() and not (bool(torch.isfinite(scales).all()) and float(scales.min()) >= 0):
        raise CodecError("a block scale is negative, NaN or infinite")


def blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """`flat` zero-padded to whole blocks, as a (blocks, block_size) view."""
    pad = -flat.numel() % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block_size)


def block_count(numel: int, block_size: int) -> int:
    return -(-numel // block_size)
