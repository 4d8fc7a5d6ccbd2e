"""The server's side: check what arrived, ask the survivors, rebuild the seeds, strip the masks off the sum.

The server never holds an unmasked individual update: it adds the masked tensors (uint64, wrapping)
tensor by tensor, then removes from that sum each survivor's self mask (its seed rebuilt from
threshold-many shares and checked against the survivor's signed commitment) and every pairwise mask a
survivor shared with a dropped facility (those never cancelled). What is left decodes to the sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedhpc.errors import SecAggRejected, SecAggThresholdError
from fedhpc.secagg import prg
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.shares import Share, checked_shares_message, combine, parse_share, seed_commitment
from fedhpc.secagg.signed import unb64, verify
from fedhpc.secagg.unmask_reply import REPLY_KIND, unmask_request


class Unmasker:
    """One round's unmasking; `shares_messages` are those of the facilities whose masked update arrived."""

    def __init__(self, roster: RoundRoster, shares_messages: dict[str, object]):
        self.roster = roster
        self._commitments = {sender: unb64(checked_shares_message(message, roster, sender)["commitment"],
                                           what="commitment", size=32)
                             for sender, message in shares_messages.items()}
        self.shares_messages = dict(shares_messages)
        self.survivors = sorted(shares_messages)
        self.dropped = sorted(set(roster.names) - set(self.survivors))
        if len(self.survivors) < roster.threshold:
            raise SecAggThresholdError(
                f"round {roster.round}: {len(self.survivors)} masked updates arrived ({self.survivors}), fewer than "
                f"the threshold {roster.threshold}; their masks cannot be removed, the round fails")
        self._shares: dict[str, list[Share]] = {name: [] for name in self.survivors}
        self._pair_seeds: dict[tuple[str, str], bytes] = {}
        self._answered: list[str] = []
        self._self_seeds: dict[str, bytes] | None = None

    def request(self) -> dict[str, Any]:
        return unmask_request(self.roster, self.survivors)

    def accept(self, sender: str, reply: object) -> None:
        """Take one survivor's signed answer; SecAggRejected (and nothing kept) if any part of it is wrong."""
        if sender not in self.survivors or sender in self._answered:
            raise SecAggRejected(f"{REPLY_KIND} from {sender}: not an unanswered survivor of round {self.roster.round}")
        body = verify(reply, self.roster.participants[sender].identity, kind=REPLY_KIND, who=sender)
        if ((body.get("run_id"), body.get("round"), body.get("sender"), body.get("survivors"), body.get("dropped"))
                != (self.roster.run_id, self.roster.round, sender, self.survivors, self.dropped)):
            raise SecAggRejected(f"{REPLY_KIND} from {sender}: answers another run, round or request")
        revealed, seeds = body.get("self_mask_shares"), body.get("pair_seeds")
        if not (isinstance(revealed, dict) and sorted(revealed) == self.survivors
                and isinstance(seeds, dict) and sorted(seeds) == self.dropped):
            raise SecAggRejected(f"{REPLY_KIND} from {sender}: expected a share for each survivor and a pair seed "
                                 "for each dropped facility")
        shares = {owner: parse_share(revealed[owner], self.roster, sender, what=f"{REPLY_KIND} from {sender}")
                  for owner in self.survivors}
        pair = {(sender, dead): unb64(seeds[dead], what=f"{REPLY_KIND} from {sender}: pair seed", size=32)
                for dead in self.dropped}
        for owner, share in shares.items():
            self._shares[owner].append(share)
        self._pair_seeds.update(pair)
        self._answered.append(sender)

    def check(self) -> None:
        """Rebuild the seeds now: a round that cannot be unmasked fails before anything is aggregated."""
        self._seeds()

    def _seeds(self) -> dict[str, bytes]:
        """Every survivor's self-mask seed, rebuilt once; SecAggThresholdError when too few answered."""
        if self._self_seeds is not None:
            return self._self_seeds
        threshold = self.roster.threshold
        if len(self._answered) < threshold:
            raise SecAggThresholdError(
                f"round {self.roster.round}: {len(self._answered)} of {len(self.survivors)} survivors answered the "
                f"unmask request ({sorted(self._answered)}), fewer than the threshold {threshold}; the round fails")
        silent = sorted(set(self.survivors) - set(self._answered))
        if self.dropped and silent:
            raise SecAggThresholdError(
                f"round {self.roster.round}: {silent} sent masked updates but did not answer while {self.dropped} "
                "dropped; their pairwise masks with the dropped facilities cannot be removed, the round fails")
        seeds = {}
        for owner, shares in self._shares.items():
            seed = combine(shares[:threshold])
            if seed_commitment(seed) != self._commitments[owner]:
                raise SecAggRejected(f"round {self.roster.round}: the self-mask seed of {owner} rebuilt from the "
                                     "answers does not match its signed commitment (a wrong share was revealed)")
            seeds[owner] = seed
        self._self_seeds = seeds
        return seeds

    def unmask(self, name: str, masked_sum: np.ndarray) -> np.ndarray:
        """The plain sum (float64) of tensor `name` over the survivors, from the sum of their masked tensors."""
        total = np.array(masked_sum, dtype=np.uint64).reshape(-1)
        for seed in self._seeds().values():
            total -= prg.mask(seed, name, total.size)
        for (survivor, dead), seed in self._pair_seeds.items():
            stream = prg.mask(seed, name, total.size)
            if survivor < dead:
                total -= stream
            else:
                total += stream
        return self.roster.fixed_point.decode(total).reshape(np.shape(masked_sum))
