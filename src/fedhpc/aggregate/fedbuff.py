"""FedBuff — Nguyen et al., 2022, "Federated Learning with Buffered Asynchronous Aggregation".

The server buffers K updates as they arrive (the orchestrator's job, `algorithm.buffer_size`), then
takes one step with their staleness-discounted changes:

    w ← w + η · Σ_i p_i · s(τ_i) · (w_i − b_i)

b_i is the global update i was trained from (`Update.base`; None: the current global), so each facility
contributes its own change rather than the distance between its stale model and today's global; p_i are
the normalised `algorithm.weighting` weights (equal: 1/K, Nguyen et al.'s mean), s the staleness discount
(polynomial a = 0.5 by default, their 1/√(1 + τ)), η the server learning rate (`algorithm.server.lr`,
default 1.0: with every update fresh, one step lands on FedAvg of the buffer, Σ_i p_i·w_i).

Expanded, this is one weighted sum over the global, the updates and their bases. A base that is the
same source as the global (or as another update's base) is read once, its weights added first, so a
buffer of fresh updates reads nothing but the global and the updates. No server state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fedhpc.aggregate.base import TensorSource, Update, Weighting, aggregation_weights
from fedhpc.aggregate.staleness import staleness_weight
from fedhpc.aggregate.streaming import Term, weighted_sum
from fedhpc.config import StalenessConfig

DEFAULT_SERVER_LR = 1.0


class FedBuff:
    def __init__(self, server_lr: float | None, staleness: StalenessConfig, weighting: Weighting = "samples"):
        self.server_lr = DEFAULT_SERVER_LR if server_lr is None else server_lr
        self.staleness, self.weighting = staleness, weighting

    def aggregate(
        self, global_: TensorSource, updates: list[Update], state: dict[str, torch.Tensor]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        weights = aggregation_weights(updates, self.weighting)
        terms: dict[int, Term] = {}  # by the source's identity, so a shared source is read once

        def add(label: str, source: TensorSource, weight: float) -> None:
            first_label, _, total = terms.get(id(source), (label, source, 0.0))
            terms[id(source)] = (first_label, source, total + weight)

        add("the global", global_, 1.0)  # first: the global fixes the shape every other tensor must have
        for update, weight in zip(updates, weights, strict=True):
            step = self.server_lr * weight * staleness_weight(self.staleness, update.staleness)
            add(update.facility, update.source, step)
            add(f"the base of {update.facility}", global_ if update.base is None else update.base, -step)
        ordered = list(terms.values())
        for name in global_.names():
            yield name, weighted_sum(name, ordered)
