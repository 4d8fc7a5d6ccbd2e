"""The aggregation interface: streaming, tensor by tensor.

An aggregator never sees a whole model: it pulls one tensor at a time from the
global and from each update, and yields each new global tensor as soon as it
is computed, so the server's memory does not grow with the number of
facilities or (beyond one tensor) with the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

Weighting = Literal["equal", "samples", "steps", "tokens"]


class TensorSource(Protocol):
    def names(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class Update:
    """One facility's verified contribution to a round (or, asynchronously, to the next global version).

    `staleness` counts the global versions between the one this update was trained from and the one it
    is applied to (0: fresh); the asynchronous algorithms discount it by s(staleness). `base` is the
    global it was trained from, which FedBuff subtracts to get the facility's own change; None means the
    current global (a fresh update, and every update of the synchronous algorithms, which ignore both).
    `tokens` is the loss-bearing tokens it trained on (its `metrics.tokens`, bounded by the intake).
    """

    facility: str
    source: TensorSource
    num_samples: int
    local_steps: int
    based_on_round: int
    staleness: int = 0
    base: TensorSource | None = None
    tokens: int = 0


class Aggregator(Protocol):
    def aggregate(
        self, global_: TensorSource, updates: list[Update], state: dict[str, torch.Tensor]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield every tensor of the new global (fp32), in `global_.names()` order.

        `state` is the server optimizer's state (moments), updated in place and
        persisted by the caller; stateless algorithms leave it empty.
        """
        ...


def aggregation_weights(updates: list[Update], weighting: Weighting) -> list[float]:
    """Normalised weights; a facility reporting zero samples, steps or tokens gets zero weight.

    `steps` counts optimizer steps, whatever each facility's micro-batch, accumulation and ranks: where
    those differ, `tokens` (or `samples`, its data size) weighs the work each did (docs/recipes.md).
    """
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    if weighting == "equal":
        raw = [1.0] * len(updates)
    elif weighting == "samples":
        raw = [float(u.num_samples) for u in updates]
    elif weighting == "steps":
        raw = [float(u.local_steps) for u in updates]
    else:
        raw = [float(u.tokens) for u in updates]
    total = sum(raw)
    if total <= 0:
        raw, total = [1.0] * len(updates), float(len(updates))
    return [w / total for w in raw]
