"""The facility's half of a round: mask its update and share its self-mask seed.

y_u = encode(x_u) + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod 2^64)

The pairwise masks cancel in the sum over facilities; the self mask b_u (fresh each round) hides y_u
even from someone who learns s_uv (the seeds of a facility wrongly reported as dropped); it is
Shamir-shared among the participants (shares.py) so the server can remove it once enough answer.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fedhpc.errors import SecAggRejected
from fedhpc.secagg import prg
from fedhpc.secagg.keys import FacilityKeys
from fedhpc.secagg.roster import RoundRoster, agreed_secret, pair_seed
from fedhpc.secagg.shares import shares_message


class MaskedRound:
    """One facility's masks for one round; the self-mask seed lives only in this object."""

    def __init__(self, keys: FacilityKeys, roster: RoundRoster):
        if roster.participants.get(keys.name) != keys.public:
            raise SecAggRejected(
                f"round {roster.round}: the task's roster lists other keys for {keys.name} than its own "
                "(keys were replaced on the way, or the key directory changed since the advertisement)")
        self.keys = keys
        self.roster = roster
        self._self_seed = os.urandom(32)
        self._shared = {name: agreed_secret(keys.agreement, public)
                        for name, public in roster.participants.items()}
        self._pair_seeds = {name: pair_seed(self._shared[name], roster, keys.name, name)
                            for name in roster.names if name != keys.name}

    def mask(self, name: str, values: np.ndarray) -> np.ndarray:
        """Tensor `name` encoded and masked (uint64, same shape); SecAggRangeError if a value is out of range."""
        encoded = self.roster.fixed_point.encode(name, values)
        count = encoded.size
        masked = (encoded.reshape(-1) + prg.mask(self._self_seed, name, count))
        for other, seed in self._pair_seeds.items():
            stream = prg.mask(seed, name, count)
            if self.keys.name < other:
                masked += stream
            else:
                masked -= stream
        return masked.reshape(encoded.shape)

    def share_message(self) -> dict[str, Any]:
        """The signed message carrying every participant's encrypted share of this round's self-mask seed."""
        return shares_message(self.keys, self.roster, self._self_seed, self._shared)
