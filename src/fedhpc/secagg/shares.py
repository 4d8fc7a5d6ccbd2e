"""The self-mask seed's shares: split, encrypted to each participant, signed; and checked on the way back.

The seed (32 bytes) is Shamir-shared as two 16-byte halves over GF(2^128) with pycryptodome,
threshold-of-|P|, participant i (in roster order) holding x-coordinate i + 1. Each share is encrypted
with ChaCha20-Poly1305 under a key only the sender and its recipient can derive (roster.share_key),
bound by its associated data to the run, round and pair. The message carries a SHA-256 commitment to
the seed, so the server can check a rebuilt seed before it subtracts a single mask.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedhpc.errors import SecAggRejected
from fedhpc.secagg.keys import FacilityKeys
from fedhpc.secagg.roster import RoundRoster, agreed_secret, share_key
from fedhpc.secagg.signed import b64, canonical, sign, unb64, verify

SHARES_KIND = "secagg-shares"

Share = tuple[int, bytes, bytes]  # x-coordinate, share of the first half, share of the second half


def seed_commitment(seed: bytes) -> bytes:
    """SHA-256 of a self-mask seed under a label: binding, and hiding since the seed is 256 random bits."""
    return hashlib.sha256(b"fedhpc-secagg-v1|self-mask-commitment|" + seed).digest()


def _aad(roster: RoundRoster, sender: str, recipient: str) -> bytes:
    """What a share ciphertext is bound to: lifted into another run, round or pair, it fails to decrypt."""
    return canonical({"run_id": roster.run_id, "round": roster.round, "sender": sender, "recipient": recipient})


def shares_message(keys: FacilityKeys, roster: RoundRoster, seed: bytes, shared: dict[str, bytes]) -> dict[str, Any]:
    """The signed message with every participant's encrypted share of `seed`; `shared` holds the pair secrets."""
    names = roster.names
    first, second = (Shamir.split(roster.threshold, len(names), seed[i:i + 16]) for i in (0, 16))
    shares = {}
    for (index, half_one), (index_two, half_two) in zip(first, second, strict=True):
        if index != index_two:
            raise RuntimeError("pycryptodome numbered the two halves' shares differently")
        recipient = names[index - 1]
        plaintext = canonical({"index": index, "halves": [b64(half_one), b64(half_two)]})
        nonce = os.urandom(12)
        key = share_key(shared[recipient], roster, keys.name, recipient)
        ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext, _aad(roster, keys.name, recipient))
        shares[recipient] = {"nonce": b64(nonce), "ciphertext": b64(ciphertext)}
    return sign({"kind": SHARES_KIND, "run_id": roster.run_id, "round": roster.round, "sender": keys.name,
                 "commitment": b64(seed_commitment(seed)), "shares": shares}, keys.identity)


def checked_shares_message(message: object, roster: RoundRoster, sender: str) -> dict[str, Any]:
    """The body of `sender`'s shares message once signed by its pinned key and addressed to this round."""
    if sender not in roster.participants:
        raise SecAggRejected(f"{SHARES_KIND} from {sender}: not a participant of round {roster.round}")
    body = verify(message, roster.participants[sender].identity, kind=SHARES_KIND, who=sender)
    if (body.get("run_id"), body.get("round"), body.get("sender")) != (roster.run_id, roster.round, sender):
        raise SecAggRejected(f"{SHARES_KIND} from {sender}: made for run {body.get('run_id')!r} round "
                             f"{body.get('round')!r} by {body.get('sender')!r}, not this round")
    shares = body.get("shares")
    if not isinstance(shares, dict) or sorted(shares) != roster.names:
        raise SecAggRejected(f"{SHARES_KIND} from {sender}: expected one share for each of {roster.names}")
    unb64(body.get("commitment"), what=f"{SHARES_KIND} from {sender}: commitment", size=32)
    return body


def decrypt_share(keys: FacilityKeys, roster: RoundRoster, sender: str, body: dict[str, Any]) -> Share:
    """This facility's share from a checked shares message; SecAggRejected if it does not decrypt."""
    entry = body["shares"][keys.name]
    what = f"{SHARES_KIND} from {sender}: share for {keys.name}"
    if not isinstance(entry, dict):
        raise SecAggRejected(f"{what}: expected an object")
    key = share_key(agreed_secret(keys.agreement, roster.participants[sender]), roster, sender, keys.name)
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(unb64(entry.get("nonce"), what=f"{what}: nonce", size=12),
                                                  unb64(entry.get("ciphertext"), what=f"{what}: ciphertext"),
                                                  _aad(roster, sender, keys.name))
    except InvalidTag:
        raise SecAggRejected(f"{what}: does not decrypt (altered, or encrypted for another pair or round)") from None
    return parse_share(_json(plaintext, what=what), roster, keys.name, what=what)


def parse_share(entry: object, roster: RoundRoster, holder: str, *, what: str) -> Share:
    """A share as (x, half one, half two), checked to sit at `holder`'s x-coordinate."""
    if not isinstance(entry, dict) or not isinstance(entry.get("halves"), list) or len(entry["halves"]) != 2:
        raise SecAggRejected(f"{what}: expected {{index, halves: [two shares]}}")
    if entry.get("index") != roster.share_index(holder):
        raise SecAggRejected(f"{what}: index {entry.get('index')!r} is not {holder}'s ({roster.share_index(holder)})")
    one, two = (unb64(half, what=f"{what}: half", size=16) for half in entry["halves"])
    return entry["index"], one, two


def combine(shares: list[Share]) -> bytes:
    """The 32-byte seed from threshold-many shares."""
    return (Shamir.combine([(index, one) for index, one, _ in shares])
            + Shamir.combine([(index, two) for index, _, two in shares]))


def _json(plaintext: bytes, *, what: str) -> object:
    try:
        return json.loads(plaintext)
    except ValueError:
        raise SecAggRejected(f"{what}: not JSON") from None
