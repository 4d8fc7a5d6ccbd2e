"""Staleness-weighted mixing, the server rule of FedAsync and FedCompass.

FedAsync — Xie et al., 2019, "Asynchronous Federated Optimization": whenever an update arrives the
server mixes it into the global, discounted by how stale it is. FedCompass — Li et al., ICLR 2024,
"FedCompass: Efficient Cross-Silo Federated Learning on Heterogeneous Client Devices Using a Computing
Power-Aware Scheduler": the scheduler gives each facility as many local steps as makes a group of
facilities arrive together, and the server mixes each arriving group in the same way. One rule covers
both, for a batch of updates i (one for FedAsync, a group for FedCompass):

    w ← (1 − Σ_i α_i)·w + Σ_i α_i·w_i,    α_i = α · s(τ_i) · share_i

with s the staleness discount (`fedhpc.aggregate.staleness`), τ_i the update's staleness and p_i its
weight within the batch from `algorithm.weighting`:

- FedAsync (`num_facilities` None): share_i = p_i. An update normally arrives alone, so share = 1 and
  this is Xie et al.'s w ← (1 − α_t)·w + α_t·w_new with α_t = α·s(τ).
- FedCompass (`num_facilities` N): share_i = p_i · n / N for a group of n updates. A group speaks for
  n of the N facilities, so it moves the global n/N of the way: a lone facility cannot pull the global
  all the way to its own model (with α = 1 that would be discarding everyone else's training), while a
  group of all N facilities, all fresh, with α = 1, gives exactly FedAvg, Σ_i p_i·w_i.

Σ_i α_i ≤ α ≤ 1, so the global's own weight is never negative. The result is one weighted sum per
tensor, computed in fp32 by `weighted_sum`; there is no server state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fedhpc.aggregate.base import TensorSource, Update, Weighting, aggregation_weights
from fedhpc.aggregate.staleness import staleness_weight
from fedhpc.aggregate.streaming import weighted_sum
from fedhpc.config import StalenessConfig


class StalenessMixing:
    def __init__(
        self,
        alpha: float,
        staleness: StalenessConfig,
        weighting: Weighting = "samples",
        num_facilities: int | None = None,
    ):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"mixing weight α must be in (0, 1], got {alpha}")
        if num_facilities is not None and num_facilities < 1:
            raise ValueError(f"num_facilities must be at least 1, got {num_facilities}")
        self.alpha, self.staleness, self.weighting = alpha, staleness, weighting
        self.num_facilities = num_facilities

    def mixing_weights(self, updates: list[Update]) -> list[float]:
        """α_i of each update, in order: what each update's model contributes to the new global."""
        shares = aggregation_weights(updates, self.weighting)
        if self.num_facilities is not None:
            if len(updates) > self.num_facilities:
                raise ValueError(
                    f"a group of {len(updates)} updates from {self.num_facilities} facilities: "
                    "a group holds at most one update per facility"
                )
            shares = [share * len(updates) / self.num_facilities for share in shares]
        return [
            self.alpha * staleness_weight(self.staleness, update.staleness) * share
            for update, share in zip(updates, shares, strict=True)
        ]

    def aggregate(
        self, global_: TensorSource, updates: list[Update], state: dict[str, torch.Tensor]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        alphas = self.mixing_weights(updates)
        terms = [("the global", global_, 1.0 - sum(alphas))]
        terms += [(update.facility, update.source, alpha) for update, alpha in zip(updates, alphas, strict=True)]
        for name in global_.names():
            yield name, weighted_sum(name, terms)
