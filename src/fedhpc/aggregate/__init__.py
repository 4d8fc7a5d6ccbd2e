"""Aggregation algorithms, one file each, chosen by `algorithm.name` through `AGGREGATORS`."""

from __future__ import annotations

from collections.abc import Callable

from fedhpc.aggregate.base import Aggregator, TensorSource, Update, aggregation_weights
from fedhpc.aggregate.fedavg import FedAvg
from fedhpc.config import AlgorithmConfig

AGGREGATORS: dict[str, Callable[[AlgorithmConfig], Aggregator]] = {
    "fedavg": lambda algorithm: FedAvg(algorithm.weighting),
}


def make_aggregator(algorithm: AlgorithmConfig) -> Aggregator:
    return AGGREGATORS[algorithm.name](algorithm)


__all__ = ["AGGREGATORS", "Aggregator", "FedAvg", "TensorSource", "Update", "aggregation_weights", "make_aggregator"]
