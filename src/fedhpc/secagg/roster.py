"""One round's participants, parameters and the secrets each pair of facilities agrees on for it.

The server writes a `RoundRoster` into every participant's task; each facility derives, from its own
agreement key and another's public one, a pairwise mask seed and a share-encryption key that are bound
to the run, the round and the pair (HKDF info). Revealing one round's seed for a dropped facility so
exposes nothing of any other round or pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedhpc.errors import SecAggRejected
from fedhpc.secagg.fixed_point import FixedPoint
from fedhpc.secagg.keys import PublicKeys


@dataclass(frozen=True)
class RoundRoster:
    """Who takes part in round `round` of run `run_id`, with their pinned public keys, and the round's rules."""

    run_id: str
    round: int
    threshold: int
    fixed_point: FixedPoint
    participants: dict[str, PublicKeys]

    def __post_init__(self) -> None:
        count = len(self.participants)
        if count < 2:
            raise SecAggRejected(f"round {self.round}: secure aggregation needs at least 2 participants, got {count}")
        if not (count // 2 < self.threshold <= count and self.threshold >= 2):
            raise SecAggRejected(
                f"round {self.round}: threshold {self.threshold} must be over half of the {count} participants "
                f"(so two disjoint groups can never both unmask) and at most {count}")
        self.fixed_point.check_capacity(count)

    @property
    def names(self) -> list[str]:
        """The participants in the one order every party uses (share indices, mask signs)."""
        return sorted(self.participants)

    def share_index(self, name: str) -> int:
        """The Shamir x-coordinate of `name`'s shares (1-based: 0 is where the secret sits)."""
        return self.names.index(name) + 1

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "round": self.round, "threshold": self.threshold,
                "fixed_point": self.fixed_point.to_json(),
                "participants": {name: keys.to_json() for name, keys in sorted(self.participants.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRoster:
        participants = data.get("participants")
        if not isinstance(participants, dict):
            raise SecAggRejected("secure-aggregation roster: participants must be an object")
        return cls(run_id=str(data["run_id"]), round=int(data["round"]), threshold=int(data["threshold"]),
                   fixed_point=FixedPoint.from_json(data["fixed_point"]),
                   participants={name: PublicKeys.from_json(entry, who=name) for name, entry in participants.items()})


def _derive(shared: bytes, *label: object) -> bytes:
    info = json.dumps(["fedhpc-secagg-v1", *label], separators=(",", ":")).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def agreed_secret(own: X25519PrivateKey, other: PublicKeys) -> bytes:
    return own.exchange(X25519PublicKey.from_public_bytes(other.agreement))


def pair_seed(shared: bytes, roster: RoundRoster, one: str, other: str) -> bytes:
    """The mask seed both facilities of a pair compute for this round; order-free (the pair is sorted)."""
    low, high = sorted((one, other))
    return _derive(shared, "pair-seed", roster.run_id, roster.round, low, high)


def share_key(shared: bytes, roster: RoundRoster, sender: str, recipient: str) -> bytes:
    """The AEAD key for the shares `sender` encrypts to `recipient` in this round (one direction, one round)."""
    return _derive(shared, "share-key", roster.run_id, roster.round, sender, recipient)
