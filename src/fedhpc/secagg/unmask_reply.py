"""The facility's answer to the server's unmask request: shares for the survivors, pair seeds for the dropped.

For each survivor u (its masked update arrived) the facility reveals its share of u's self-mask seed;
for each dropped facility d it reveals the round's pairwise seed s_{v,d} it shares with d (this round
only: the seed is bound to the round, so nothing of another round leaks). It never reveals both for
the same facility in one answer, and it refuses a request whose survivors are fewer than the threshold:
answering that could help unmask a small group's sum, or a single update.
"""

from __future__ import annotations

from typing import Any

from fedhpc.errors import SecAggRejected
from fedhpc.secagg.keys import FacilityKeys
from fedhpc.secagg.roster import RoundRoster, agreed_secret, pair_seed
from fedhpc.secagg.shares import checked_shares_message, decrypt_share
from fedhpc.secagg.signed import b64, sign

REQUEST_KIND = "secagg-unmask-request"
REPLY_KIND = "secagg-unmask"


def unmask_request(roster: RoundRoster, survivors: list[str]) -> dict[str, Any]:
    """What the server asks every survivor (unsigned: the server holds no key; each facility checks it)."""
    return {"kind": REQUEST_KIND, "run_id": roster.run_id, "round": roster.round,
            "survivors": sorted(survivors), "dropped": sorted(set(roster.names) - set(survivors))}


def checked_request(request: object, roster: RoundRoster) -> tuple[list[str], list[str]]:
    """(survivors, dropped) of a request that fits this round: disjoint, covering the roster, over threshold."""
    if not isinstance(request, dict) or request.get("kind") != REQUEST_KIND:
        raise SecAggRejected(f"unmask request: expected a {REQUEST_KIND} object")
    if (request.get("run_id"), request.get("round")) != (roster.run_id, roster.round):
        raise SecAggRejected(f"unmask request: for run {request.get('run_id')!r} round {request.get('round')!r}, "
                             f"not run {roster.run_id!r} round {roster.round}")
    survivors, dropped = request.get("survivors"), request.get("dropped")
    if not (isinstance(survivors, list) and isinstance(dropped, list)
            and sorted(survivors) == survivors and sorted(dropped) == dropped
            and sorted(survivors + dropped) == roster.names):
        raise SecAggRejected("unmask request: survivors and dropped must be sorted, disjoint lists that together "
                             f"name the round's participants {roster.names}")
    if len(survivors) < roster.threshold:
        raise SecAggRejected(f"unmask request: {len(survivors)} survivors, fewer than the threshold "
                             f"{roster.threshold}; refusing to help unmask a group that small")
    return survivors, dropped


def unmask_reply(keys: FacilityKeys, roster: RoundRoster, request: object,
                 shares_messages: dict[str, object]) -> dict[str, Any]:
    """The signed answer to `request`, given the survivors' shares messages the server forwarded."""
    survivors, dropped = checked_request(request, roster)
    if keys.name not in survivors:
        raise SecAggRejected(f"unmask request: {keys.name} is not among the survivors {survivors}")
    revealed = {}
    for sender in survivors:
        if sender not in shares_messages:
            raise SecAggRejected(f"unmask request: the shares message of survivor {sender} was not forwarded")
        body = checked_shares_message(shares_messages[sender], roster, sender)
        index, one, two = decrypt_share(keys, roster, sender, body)
        revealed[sender] = {"index": index, "halves": [b64(one), b64(two)]}
    seeds = {dead: b64(pair_seed(agreed_secret(keys.agreement, roster.participants[dead]), roster, keys.name, dead))
             for dead in dropped}
    return sign({"kind": REPLY_KIND, "run_id": roster.run_id, "round": roster.round, "sender": keys.name,
                 "survivors": survivors, "dropped": dropped, "self_mask_shares": revealed, "pair_seeds": seeds},
                keys.identity)
