"""Top-k sparsification: the `k` entries of largest magnitude, as their flat indices and fp32 values.

Everything else decodes to zero; with error feedback what was dropped is sent in
later rounds. Indices are int32 below 2^31 entries (int64 beyond) and written in
ascending order, so a reader checks uniqueness in one pass and a duplicated or
out-of-range index cannot be an encoder's output. k = ceil(fraction × entries): a
value costs 64 bits, so fraction 0.01 sends 1/50 of fp32's bytes.
"""

from __future__ import annotations

import math

import torch

from fedhpc.errors import CodecError
from fedhpc.exchange.codecs.base import Encoded, Params, PartSpec, int_param, numel_of

INT32_LIMIT = 2**31 - 1


def index_dtype(numel: int) -> str:
    return "int32" if numel <= INT32_LIMIT else "int64"


class TopKCodec:
    name = "topk"
    lossy = True

    def __init__(self, fraction: float = 0.01):
        self.fraction = fraction

    def params_for(self, shape: tuple[int, ...]) -> Params:
        numel = numel_of(shape)
        return {"k": min(numel, math.ceil(self.fraction * numel))}

    def encode(self, tensor: torch.Tensor) -> Encoded:
        flat = tensor.detach().reshape(-1).to(torch.float32)
        k = int(self.params_for(tuple(flat.shape))["k"])
        indices = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        values = flat[indices]
        dtype = torch.int32 if index_dtype(flat.numel()) == "int32" else torch.int64
        return Encoded(parts={"indices": indices.to(dtype).contiguous(), "values": values.contiguous()},
                       params={"k": k})

    def expected_parts(self, shape: tuple[int, ...], params: Params) -> dict[str, PartSpec]:
        numel = numel_of(shape)
        k = int_param(params, "k", 0, numel)
        return {"indices": PartSpec(index_dtype(numel), (k,)), "values": PartSpec("float32", (k,))}

    def decode(self, parts: dict[str, torch.Tensor], params: Params, shape: tuple[int, ...]) -> torch.Tensor:
        indices, values = parts["indices"].long(), parts["values"]
        out = torch.zeros(numel_of(shape), dtype=torch.float32)
        if indices.numel():
            if int(indices[0]) < 0 or int(indices[-1]) >= out.numel():
                raise CodecError(f"an index is outside [0, {out.numel()})")
            if not bool((indices[1:] > indices[:-1]).all()):
                raise CodecError("indices are repeated or not in ascending order (no encoder writes that)")
            out[indices] = values
        return out.reshape(shape)
