"""The run's privacy budget: the private aggregator it wraps, ε after each round, and the stop at `target_epsilon`.

The server side of `privacy:` (docs/privacy.md): `fedhpc.privacy` does the clipping, noise and accounting;
this module decides when they apply in a run. ε is a function of the schedule alone (noise multiplier,
sampling rate, rounds, δ), never of the data, so it is computed before a round is launched, and a round
whose ε would pass the target is never launched (nor, asynchronously, committed): the released globals
are exactly those the budget covers, also after a resume.
"""

from __future__ import annotations

import math
from functools import lru_cache

from fedhpc.aggregate import Aggregator
from fedhpc.config import AlgorithmConfig
from fedhpc.config.privacy import PrivacyConfig, accounted_noise_multiplier, expected_participants, sampling_rate
from fedhpc.errors import PrivacyBudgetReached
from fedhpc.privacy import PrivateAggregation, epsilon_after


class PrivacyBudget:
    """`privacy` applied to `algorithm`'s rounds over `num_facilities` facilities."""

    def __init__(self, privacy: PrivacyConfig, algorithm: AlgorithmConfig, num_facilities: int):
        self.privacy = privacy
        self.algorithm = algorithm
        self.noise_multiplier = accounted_noise_multiplier(privacy, algorithm)
        self.sampling_rate = sampling_rate(algorithm)
        self.expected_participants = expected_participants(algorithm, num_facilities)
        self.aggregator: PrivateAggregation | None = None
        self._epsilon = lru_cache(maxsize=None)(self._account)

    def wrap(self, inner: Aggregator) -> PrivateAggregation:
        """The run's aggregator: `inner` fed one clipped, noised mean update per round."""
        self.aggregator = PrivateAggregation(inner, self.privacy, self.expected_participants)
        return self.aggregator

    def epsilon(self, rounds: int) -> float:
        """ε spent at `privacy.delta` once `rounds` rounds (server steps, for FedBuff) have been released."""
        return self._epsilon(rounds)

    def _account(self, rounds: int) -> float:
        if rounds <= 0:
            return 0.0
        return epsilon_after(self.noise_multiplier, self.sampling_rate, rounds, self.privacy.delta)

    def check_before(self, round: int) -> None:
        """Raise `PrivacyBudgetReached` if releasing `round` would spend more than `privacy.target_epsilon`."""
        target = self.privacy.target_epsilon
        if target is None:
            return
        spent = self.epsilon(round)
        if spent > target:
            before = self.epsilon(round - 1)
            raise PrivacyBudgetReached(
                f"privacy budget reached: round {round} would spend epsilon {spent:.3g} at delta "
                f"{self.privacy.delta:g}, above privacy.target_epsilon {target:g}; the {round - 1} round(s) "
                f"before it spent {before:.3g}"
            )

    def round_fields(self, round: int) -> dict[str, object]:
        """What the ledger row and `aggregated` event of `round` record about its privacy (after its aggregation)."""
        assert self.aggregator is not None, "wrap() builds the aggregator before any round"
        spent = self.epsilon(round)
        fields: dict[str, object] = {
            "epsilon": spent if math.isfinite(spent) else None,  # JSON has no infinity: z = 0 spends no finite ε
            "delta": self.privacy.delta,
            "noise_multiplier": self.privacy.noise_multiplier,
        }
        released = self.aggregator.last_round
        if released is not None:
            fields.update(
                clip_norm=released.clip_norm,
                clipped=released.clipped,
                update_norms=released.norms,  # the change of each update before clipping: what C is chosen by
                next_clip_norm=released.next_clip_norm,
                noise_std=released.noise_std,
            )
        return fields
