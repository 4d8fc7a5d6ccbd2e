"""Which aggregation rules DP-FedAvg composes with, and wrapping the chosen one.

The rules themselves live with the experiment file's validation (`fedhpc.config.privacy`, torch-free so
`validate` can refuse a combination before anything runs); this is the same decision for callers of
this package, and the wrapper built once it has passed.
"""

from __future__ import annotations

from fedhpc.aggregate.base import Aggregator
from fedhpc.config import AlgorithmConfig
from fedhpc.config.privacy import PrivacyConfig, accounting_refusal, expected_participants
from fedhpc.errors import PrivacyRefused
from fedhpc.privacy.aggregator import PrivateAggregation


def refusal(algorithm: AlgorithmConfig) -> str | None:
    """Why DP cannot be accounted with this algorithm section ("key: reason"), or None when it can."""
    refused = accounting_refusal(algorithm)
    return None if refused is None else f"{refused[0]} {refused[1]}"


def make_private(
    aggregator: Aggregator, algorithm: AlgorithmConfig, privacy: PrivacyConfig, num_facilities: int
) -> PrivateAggregation:
    """`aggregator` (made from `algorithm`) with DP-FedAvg around it; refuses what `refusal` refuses."""
    refused = accounting_refusal(algorithm)
    if refused is not None:
        raise PrivacyRefused(refused[1], key=refused[0])
    return PrivateAggregation(aggregator, privacy, expected_participants(algorithm, num_facilities))
