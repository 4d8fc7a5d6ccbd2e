"""Scheduling policies: who trains in a round, for how many steps, and when the round may close.

The synchronous policy (FedAvg-style rounds): the facilities taking part train
the configured number of local steps from the same global, and the round
aggregates if at least `min_facilities` updates were accepted.

- Who takes part: with `algorithm.participation` = p < 1, a sample of
  max(min_facilities, ⌈p·N⌉) of the N facilities, drawn with seed
  `algorithm.seed + round`, so a resumed round asks the same facilities.
- When the round closes: when every job it waits for has ended, or, with
  `algorithm.round_deadline`, as soon as the deadline has passed and the quorum
  is met. A job still running then is late: `algorithm.late_updates` says
  whether it is cancelled (`drop`) or keeps running and its update counts in a
  later round (`next_round`), as a stale update.
- When a job is cancelled regardless: `round_timeout` seconds after it started.

With `privacy` on, `PoissonSyncPolicy` samples instead: each facility takes part
independently with probability p (from a secret kept in the run directory), which is
the sampling the privacy accountant composes. A round may then ask few or none:
its quorum is min(min_facilities, facilities asked), and a round that asked none
still commits (DP-FedAvg releases a noise-only step over its fixed denominator).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
from dataclasses import dataclass
from typing import Literal

from fedhpc.config import AlgorithmConfig


@dataclass(frozen=True)
class Assignment:
    facility: str
    local_steps: int


class SyncPolicy:
    def __init__(self, algorithm: AlgorithmConfig, facilities: list[str]):
        self.algorithm = algorithm
        self.facilities = facilities

    def participants(self, round: int) -> list[str]:
        """The facilities asked to train in `round`, in configuration order; the same on every call."""
        count = min(len(self.facilities), max(self.algorithm.min_facilities, self.sample_size()))
        if count == len(self.facilities):
            return list(self.facilities)
        chosen = set(random.Random(self.algorithm.seed + round).sample(range(len(self.facilities)), count))
        return [name for index, name in enumerate(self.facilities) if index in chosen]

    def sample_size(self) -> int:
        # the small tolerance keeps a fraction such as 0.3 of 10 from rounding up to 4
        return math.ceil(self.algorithm.participation * len(self.facilities) - 1e-9)

    def assignments(self, round: int) -> list[Assignment]:
        return [Assignment(name, self.algorithm.local_steps) for name in self.participants(round)]

    def timeout_at(self, job_started_at: float) -> float:
        """When a job that started at `job_started_at` is cancelled, whatever its round is doing."""
        return job_started_at + self.algorithm.round_timeout

    def may_close(self, round_started_at: float, accepted: int, now: float) -> bool:
        """Whether a round may aggregate while jobs are still running (it always may once none are)."""
        deadline = self.algorithm.round_deadline
        return deadline is not None and now >= round_started_at + deadline and self.quorum_met(accepted)

    @property
    def late_updates(self) -> Literal["drop", "next_round"]:
        """What happens to a job still running when its round closes: `drop` unless configured."""
        return self.algorithm.late_updates or "drop"

    def quorum_met(self, accepted: int) -> bool:
        return accepted >= self.algorithm.min_facilities


class PoissonSyncPolicy(SyncPolicy):
    """Each facility asked with probability `participation`, independently: what the DP accountant assumes.

    Topping the sample up to `min_facilities`, as `SyncPolicy` does, would make who takes part depend on
    who else was drawn, and the subsampled accountant would no longer hold; the quorum shrinks instead.
    Amplification by sampling also needs the sample to be secret from whoever sees the globals, so it is
    drawn from `key` (kept in the run directory, `sampling_key`), not from the public `algorithm.seed`:
    HMAC-SHA256 of the round and facility, the same draw for a resumed round.
    """

    def __init__(self, algorithm: AlgorithmConfig, facilities: list[str], key: bytes):
        super().__init__(algorithm, facilities)
        self._key = key
        self._asked: int | None = None  # facilities asked in the round last assigned

    def participants(self, round: int) -> list[str]:
        if self.algorithm.participation >= 1.0:
            return list(self.facilities)
        return [name for name in self.facilities if self._uniform(round, name) < self.algorithm.participation]

    def _uniform(self, round: int, facility: str) -> float:
        digest = hmac.new(self._key, f"{round}\0{facility}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def assignments(self, round: int) -> list[Assignment]:
        assigned = super().assignments(round)
        self._asked = len(assigned)
        return assigned

    def quorum_met(self, accepted: int) -> bool:
        """At least min_facilities, or every facility the round asked if it asked fewer (none: a noise-only step)."""
        asked = len(self.facilities) if self._asked is None else self._asked
        return accepted >= min(self.algorithm.min_facilities, asked)


def sampling_key(stored: str | None, noise_seed: int | None) -> bytes:
    """The secret the Poisson sample is drawn from: the run's stored one (hex), else a new one.

    With `privacy.noise_seed` (testing only) it is derived from that seed, so two runs sample alike.
    """
    if stored is not None:
        return bytes.fromhex(stored)
    if noise_seed is not None:
        return hashlib.sha256(f"fedhpc sampling {noise_seed}".encode()).digest()
    return secrets.token_bytes(32)
