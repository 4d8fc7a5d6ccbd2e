"""int8 blockwise absmax: each block of `block_size` values as int8 codes times one fp32 step.

The step is the block's absmax / 127, so the codes use [-127, 127] symmetrically and a
value's rounding error is at most half a step. A value costs 8 + 32/block_size bits: 3.94x
fewer bytes than fp32 with blocks of 256 (3.76x with 64), never quite 4x because of the scales.
"""

from __future__ import annotations

import torch

from fedhpc.errors import CodecError
from fedhpc.exchange.codecs.base import (
    Encoded,
    Params,
    PartSpec,
    block_count,
    blocks,
    check_scales,
    int_param,
    numel_of,
)

MAX_BLOCK = 1 << 20


class Int8Codec:
    name = "int8"
    lossy = True

    def __init__(self, block_size: int = 64):
        self.block_size = block_size

    def encode(self, tensor: torch.Tensor) -> Encoded:
        flat = tensor.detach().reshape(-1).to(torch.float32)
        grid = blocks(flat, self.block_size)
        scale = grid.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.round(grid / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return Encoded(
            parts={"codes": codes.reshape(-1)[: flat.numel()].contiguous(), "scale": scale.contiguous()},
            params={"block_size": self.block_size},
        )

    def params_for(self, shape: tuple[int, ...]) -> Params:
        return {"block_size": self.block_size}

    def expected_parts(self, shape: tuple[int, ...], params: Params) -> dict[str, PartSpec]:
        block_size = int_param(params, "block_size", 1, MAX_BLOCK)
        numel = numel_of(shape)
        return {
            "codes": PartSpec("int8", (numel,)),
            "scale": PartSpec("float32", (block_count(numel, block_size),)),
        }

    def decode(self, parts: dict[str, torch.Tensor], params: Params, shape: tuple[int, ...]) -> torch.Tensor:
        block_size = int_param(params, "block_size", 1, MAX_BLOCK)
        codes, scale = parts["codes"], parts["scale"]
        check_scales(scale)
        if codes.numel() and int(codes.min()) < -127:
            raise CodecError("a code is -128, outside the symmetric int8 code [-127, 127]")
        grid = blocks(codes.to(torch.float32), block_size)
        grid *= scale[:, None]
        return grid.reshape(-1)[: codes.numel()].reshape(shape)
