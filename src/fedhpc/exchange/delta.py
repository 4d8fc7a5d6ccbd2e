"""Updates sent as deltas: the trained tensors minus the global they started from.

A facility may send Δ = w_local − w_global instead of w_local
(`exchange.update_form: delta`). In bf16 a delta keeps the small change a
round makes, where bf16 weights would round much of it away against the
weights' magnitude; and the server adds it to its fp32 master copy of that
global, so the fp32 residual lost when the global was staged in bf16 comes back.

Every aggregator takes the facility's weights, so the server opens a delta as
`DeltaUpdateDir`: the same published directory, verified the same way, whose
`get` returns base + Δ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedhpc.exchange.reader import ExchangeDir


class DeltaUpdateDir(ExchangeDir):
    """A delta update read as the facility's weights: `get(name)` is base[name] + Δ[name], in fp32.

    `base` is the global the update names as `based_on_round` (the server's fp32
    master copy of it); it is closed with this directory.
    """

    def __init__(self, path: Path, base: ExchangeDir):
        super().__init__(path)
        self.base = base

    def get(self, name: str) -> torch.Tensor:
        weights = self.base.get(name).to(torch.float32)
        weights += super().get(name).to(torch.float32)
        return weights

    def close(self) -> None:
        super().close()
        self.base.close()
