"""FedAvg — McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized Data".

Update rule: w_{t+1} = Σ_k p_k · w_k, with p_k ∝ 1, n_k (samples) or τ_k (local steps).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fedhpc.aggregate.base import TensorSource, Update, Weighting, aggregation_weights
from fedhpc.aggregate.streaming import weighted_mean


class FedAvg:
    def __init__(self, weighting: Weighting = "samples"):
        self.weighting = weighting

    def aggregate(
        self, global_: TensorSource, updates: list[Update], state: dict[str, torch.Tensor]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        weights = aggregation_weights(updates, self.weighting)
        for name in global_.names():
            yield name, weighted_mean(name, updates, weights)
