"""Aggregation algorithms, one file each, chosen by `algorithm.name` through `AGGREGATORS`."""

from __future__ import annotations

from collections.abc import Callable

from fedhpc.aggregate.base import Aggregator, TensorSource, Update, aggregation_weights
from fedhpc.aggregate.fedasync import StalenessMixing
from fedhpc.aggregate.fedavg import FedAvg
from fedhpc.aggregate.fedbuff import FedBuff
from fedhpc.aggregate.fedopt import FedOpt, Rule
from fedhpc.aggregate.staleness import staleness_weight
from fedhpc.config import AlgorithmConfig

# Each factory takes the algorithm section and the number of facilities N (only FedCompass needs N:
# a group of n facilities moves the global n/N of the way).
AGGREGATORS: dict[str, Callable[[AlgorithmConfig, int], Aggregator]] = {
    "fedavg": lambda algorithm, _: FedAvg(algorithm.weighting),
    "fedavgm": lambda algorithm, _: _fedopt("fedavgm", algorithm),
    "fedadam": lambda algorithm, _: _fedopt("fedadam", algorithm),
    "fedyogi": lambda algorithm, _: _fedopt("fedyogi", algorithm),
    "fedadagrad": lambda algorithm, _: _fedopt("fedadagrad", algorithm),
    "fedasync": lambda algorithm, _: StalenessMixing(
        algorithm.mixing_alpha(), algorithm.staleness, algorithm.weighting, None
    ),
    "fedbuff": lambda algorithm, _: FedBuff(algorithm.server.lr, algorithm.staleness, algorithm.weighting),
    "fedcompass": lambda algorithm, num_facilities: StalenessMixing(
        algorithm.mixing_alpha(), algorithm.staleness, algorithm.weighting, num_facilities
    ),
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


def make_aggregator(algorithm: AlgorithmConfig, num_facilities: int = 1) -> Aggregator:
    """The aggregator `algorithm.name` names; `num_facilities` is the experiment's facility count N."""
    return AGGREGATORS[algorithm.name](algorithm, num_facilities)


__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "FedAvg",
    "FedBuff",
    "FedOpt",
    "StalenessMixing",
    "TensorSource",
    "Update",
    "aggregation_weights",
    "make_aggregator",
    "staleness_weight",
]
