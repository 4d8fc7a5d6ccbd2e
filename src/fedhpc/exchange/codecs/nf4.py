"""NF4 blockwise: 4-bit NormalFloat codes (Dettmers et al. 2023, QLoRA) times one fp32 absmax per block.

The 16 levels are quantiles of a standard normal scaled to [-1, 1] with an exact 0:
the densest where normally distributed values (weights, and roughly deltas) are. Each
value is the nearest level to value / absmax; two codes share a byte (the first in the
low nibble). A value costs 4 + 32/block_size bits: 7.5x fewer bytes than fp32 with
blocks of 64, 7.9x with 256.
"""

from __future__ import annotations

import torch

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
# The NF4 data type as QLoRA defines it (bitsandbytes' `create_normal_map`, rounded to fp32).
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=torch.float32)  # fmt: skip
_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
#: Half the widest gap between neighbouring levels: no value lands further than this × absmax from its level.
MAX_HALF_GAP = float(((NF4_LEVELS[1:] - NF4_LEVELS[:-1]) / 2).max())


class Nf4Codec:
    name = "nf4"
    lossy = True

    def __init__(self, block_size: int = 64):
        self.block_size = block_size

    def encode(self, tensor: torch.Tensor) -> Encoded:
        flat = tensor.detach().reshape(-1).to(torch.float32)
        grid = blocks(flat, self.block_size)
        absmax = grid.abs().amax(dim=1)
        safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        codes = torch.bucketize(grid / safe[:, None], _MIDPOINTS).to(torch.uint8).reshape(-1)[: flat.numel()]
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        pairs = codes.view(-1, 2)
        packed = pairs[:, 0] | (pairs[:, 1] << 4)
        return Encoded(parts={"codes": packed.contiguous(), "scale": absmax.contiguous()},
                       params={"block_size": self.block_size})

    def params_for(self, shape: tuple[int, ...]) -> Params:
        return {"block_size": self.block_size}

    def expected_parts(self, shape: tuple[int, ...], params: Params) -> dict[str, PartSpec]:
        block_size = int_param(params, "block_size", 1, MAX_BLOCK)
        numel = numel_of(shape)
        return {
            "codes": PartSpec("uint8", ((numel + 1) // 2,)),
            "scale": PartSpec("float32", (block_count(numel, block_size),)),
        }

    def decode(self, parts: dict[str, torch.Tensor], params: Params, shape: tuple[int, ...]) -> torch.Tensor:
        block_size = int_param(params, "block_size", 1, MAX_BLOCK)
        packed, scale = parts["codes"], parts["scale"]
        check_scales(scale)
        numel = numel_of(shape)
        codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:numel].long()
        grid = blocks(NF4_LEVELS[codes], block_size)
        grid *= scale[:, None]
        return grid.reshape(-1)[:numel].reshape(shape)
