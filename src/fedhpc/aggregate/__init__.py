"""Aggregation algorithms, one file each, chosen by `algorithm.name` through `AGGREGATORS`."""

from __future__ import annotations

from collections.abc import Callable

from fedhpc.aggregate.base import Aggregator, TensorSource, Update, aggregation_weights
from fedhpc.aggregate.fedavg import FedAvg
from fedhpc.aggregate.fedopt import FedOpt, Rule
from fedhpc.config import AlgorithmConfig

AGGREGATORS: dict[str, Callable[[AlgorithmConfig], Aggregator]] = {
    "fedavg": lambda algorithm: FedAvg(algorithm.weighting),
    "fedavgm": lambda algorithm: _fedopt("fedavgm", algorithm),
    "fedadam": lambda algorithm: _fedopt("fedadam", algorithm),
    "fedyogi": lambda algorithm: _fedopt("fedyogi", algorithm),
    "fedadagrad": lambda algorithm: _fedopt("fedadagrad", algorithm),
}


def _fedopt(rule: Rule, algorithm: AlgorithmConfig) -> FedOpt:
    server = algorithm.server
    return FedOpt(
        rule,
        algorithm.weighting,
        lr=server.lr,
        momentum=server.momentum,
        beta1=server.beta1,
        beta2=server.beta2,
        tau=server.tau,
    )


def make_aggregator(algorithm: AlgorithmConfig) -> Aggregator:
    return AGGREGATORS[algorithm.name](algorithm)


__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "FedAvg",
    "FedOpt",
    "TensorSource",
    "Update",
    "aggregation_weights",
    "make_aggregator",
]
