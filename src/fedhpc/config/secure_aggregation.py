"""`secure_aggregation:` the server learns only the sum of the facilities' updates (docs/secure-aggregation.md).

Off when the section is absent. What it changes: each facility masks its round's delta in the ring
Z_2^64 (fixed point, `fractional_bits`, values within ±`value_range`) and the server removes the masks
from the sum only, after one extra message round (a short unmask job per facility that sent a masked
update) that needs `threshold` of the round's participants to answer.
"""

from __future__ import annotations

import math

from pydantic import Field, PositiveInt

from fedhpc.config.algorithm import AlgorithmConfig
from fedhpc.config.types import Frozen, KeyedValueError


class SecureAggregationConfig(Frozen):
    threshold: PositiveInt | None = Field(
        None, description="participants whose answers remove the masks; unset: ⌈2/3⌉ of each round's (at least 2)"
    )
    fractional_bits: int = Field(24, ge=4, le=52, description="fixed point: x is sent as round(x · 2^bits)")
    value_range: float = Field(
        64.0, gt=0, description="the largest |value| of a delta a facility may send; a larger one fails its job"
    )
    keys_dirs: dict[str, str] = Field(
        default_factory=dict,
        description="facility name → where its jobs keep its keys (a path as the facility sees it, read only by "
        "it); unset: secagg_keys/<name> in the facility's staging area, never pulled by the server",
    )

    def round_threshold(self, participants: int) -> int:
        """The threshold of a round with `participants` facilities: over half of them, and at least 2."""
        if self.threshold is not None:
            return self.threshold
        return max(2, participants // 2 + 1, math.ceil(2 * participants / 3))

    def max_participants(self) -> int:
        """The most facilities whose sum cannot wrap: K · value_range · 2^bits < 2^63."""
        return int((2**63 - 1) // (self.value_range * 2.0**self.fractional_bits))


def check_secure_aggregation(
    secure: SecureAggregationConfig, algorithm: AlgorithmConfig, facilities: list[str], privacy_on: bool,
    persistent: list[str],
) -> None:
    """The checks `secure_aggregation` needs from the other sections; each raises at the key to change."""
    if algorithm.is_async:
        raise KeyedValueError("algorithm.name", f"secure aggregation needs synchronous rounds (the server learns "
                              f"only the sum of one round's updates); {algorithm.name} applies updates one by one")
    if algorithm.weighting != "equal":
        raise KeyedValueError("algorithm.weighting", "secure aggregation averages the round's deltas with equal "
                              "weights (the server sees only their sum); set weighting: equal")
    if algorithm.late_updates == "next_round":
        raise KeyedValueError("algorithm.late_updates", "a late masked update belongs to its own round's masks and "
                              "cannot join the next round's sum; use late_updates: drop")
    if algorithm.max_update_norm is not None:
        raise KeyedValueError("algorithm.max_update_norm", "the server cannot measure a masked update's norm; remove "
                              "it (secure_aggregation.value_range bounds each value at the facility instead)")
    if privacy_on:
        raise KeyedValueError("privacy", "server-side differential privacy clips each update, which secure "
                              "aggregation hides from the server; use one or the other for now")
    if persistent:
        raise KeyedValueError("facilities", f"{', '.join(persistent)}: a persistent worker does not mask its "
                              "updates yet; use mode: per-round with secure aggregation")
    unknown = sorted(set(secure.keys_dirs) - set(facilities))
    if unknown:
        raise KeyedValueError("secure_aggregation.keys_dirs", f"names no facility: {', '.join(unknown)}")
    count = len(facilities)
    if count < 2:
        raise KeyedValueError("secure_aggregation", "needs at least 2 facilities (the sum of one is its update)")
    if secure.threshold is not None:
        if not (count // 2 < secure.threshold <= count) or secure.threshold < 2:
            raise KeyedValueError("secure_aggregation.threshold", f"must be over half of the {count} facilities (so "
                                  f"two disjoint groups can never both unmask), at least 2 and at most {count}")
        if algorithm.participation < 1.0:
            raise KeyedValueError("secure_aggregation.threshold", "a fixed count does not fit rounds that sample "
                                  "facilities (algorithm.participation < 1); leave it unset for ⌈2/3⌉ of each round")
        if secure.threshold < algorithm.min_facilities:
            raise KeyedValueError("secure_aggregation.threshold", f"is below algorithm.min_facilities "
                                  f"({algorithm.min_facilities}); a round it could unmask would fail its quorum")
    if count > secure.max_participants():
        raise KeyedValueError("secure_aggregation.value_range", f"{count} facilities × {secure.value_range:g} × "
                              f"2^{secure.fractional_bits} reaches 2^63 (the sum could wrap); lower value_range or "
                              "fractional_bits")
