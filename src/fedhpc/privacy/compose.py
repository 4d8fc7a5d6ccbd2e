"""Which aggregation rules DP-FedAvg composes with, and wrapping the chosen one.

`refusal` is what `fedhpc validate` reports for a combination the accountant cannot stand behind;
`make_private` wraps the run's aggregator once that check has passed.
"""

from __future__ import annotations

import math

from fedhpc.aggregate.base import Aggregator
from fedhpc.config import AlgorithmConfig
from fedhpc.config.privacy import PrivacyConfig
from fedhpc.privacy.aggregator import PrivateAggregation

# Each asynchronous mixing step applies one facility's (or one group's) model with weight α·s(τ) and no
# fixed denominator: every step releases a single update, whose noise would have to be as large as the
# update itself, and the number of steps a facility triggers depends on its speed.
UNACCOUNTABLE = {
    "fedasync": "fedasync mixes each facility's model into the global as soon as it arrives: every step releases "
    "one facility's update with no fixed denominator to spread the noise over; use fedbuff (a buffer of K "
    "updates per step) or a synchronous algorithm",
    "fedcompass": "fedcompass applies groups whose size and membership depend on the facilities' speeds, with no "
    "fixed denominator; use fedbuff or a synchronous algorithm",
}


def refusal(algorithm: AlgorithmConfig) -> str | None:
    """Why DP cannot be accounted with this algorithm section, or None when it can."""
    if algorithm.name in UNACCOUNTABLE:
        return UNACCOUNTABLE[algorithm.name]
    if algorithm.weighting != "equal":
        return (
            f"algorithm.weighting is {algorithm.weighting}: a facility weighted by its samples, steps or tokens can "
            "carry nearly the whole average, so its clipped change is not bounded by C/m; set algorithm.weighting: equal"
        )
    return None


def expected_participants(algorithm: AlgorithmConfig, num_facilities: int) -> int:
    """m, the fixed denominator: FedBuff's buffer size K, else the round's sample size.

    The sample size mirrors the synchronous scheduler's (run/scheduling.py, which this package may not
    import): max(min_facilities, ⌈participation·N⌉), at most N.
    """
    if algorithm.name == "fedbuff":
        return algorithm.fedbuff_k()
    sample = math.ceil(algorithm.participation * num_facilities - 1e-9)
    return min(num_facilities, max(algorithm.min_facilities, sample))


def make_private(
    aggregator: Aggregator, algorithm: AlgorithmConfig, privacy: PrivacyConfig, num_facilities: int
) -> PrivateAggregation:
    """`aggregator` (made from `algorithm`) with DP-FedAvg around it; refuses what `refusal` refuses."""
    reason = refusal(algorithm)
    if reason is not None:
        raise ValueError(f"differential privacy cannot be accounted for: {reason}")
    staleness = algorithm.staleness if algorithm.name == "fedbuff" else None
    return PrivateAggregation(aggregator, privacy, expected_participants(algorithm, num_facilities), staleness)
