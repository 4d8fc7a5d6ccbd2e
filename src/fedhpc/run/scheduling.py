"""Scheduling policies: who trains in a round, for how many steps, and when the round may close.

The synchronous policy (FedAvg-style rounds): every facility trains the
configured number of local steps from the same global; the round closes when
every facility has finished or `round_timeout` has passed, and aggregates if at
least `min_facilities` updates were accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedhpc.config import AlgorithmConfig


@dataclass(frozen=True)
class Assignment:
    facility: str
    local_steps: int


class SyncPolicy:
    def __init__(self, algorithm: AlgorithmConfig, facilities: list[str]):
        self.algorithm = algorithm
        self.facilities = facilities

    def assignments(self, round: int) -> list[Assignment]:
        return [Assignment(name, self.algorithm.local_steps) for name in self.facilities]

    def deadline(self, round_started_at: float) -> float:
        return round_started_at + self.algorithm.round_timeout

    def quorum_met(self, accepted: int) -> bool:
        return accepted >= self.algorithm.min_facilities
