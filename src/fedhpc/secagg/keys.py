"""A facility's long-term keys, their signed advertisement, and the server's trust-on-first-use pins.

Each facility holds an Ed25519 identity key (it signs every message the facility sends) and an X25519
agreement key (each pair of facilities derives its per-round secrets from it). Both are created once, in
a directory on the facility's side that only its user can read, and loaded on every later round; they
never cross to the server. The public halves travel in one self-signed advertisement; the server pins a
facility's identity key the first time it sees it and rejects any later message whose key differs.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhpc.errors import SecAggError, SecAggRejected
from fedhpc.secagg.signed import b64, sign, unb64, verify

IDENTITY_FILE = "identity.ed25519"
AGREEMENT_FILE = "agreement.x25519"
ADVERT_KIND = "secagg-keys"


@dataclass(frozen=True)
class PublicKeys:
    """What others need of a facility: its identity key (to check signatures) and agreement key (32 bytes each)."""

    identity: bytes
    agreement: bytes

    def to_json(self) -> dict[str, str]:
        return {"identity_key": b64(self.identity), "agreement_key": b64(self.agreement)}

    @classmethod
    def from_json(cls, entry: object, *, who: str) -> PublicKeys:
        if not isinstance(entry, dict):
            raise SecAggRejected(f"public keys of {who}: expected a JSON object")
        return cls(identity=unb64(entry.get("identity_key"), what=f"{who}: identity_key", size=32),
                   agreement=unb64(entry.get("agreement_key"), what=f"{who}: agreement_key", size=32))


@dataclass(frozen=True)
class FacilityKeys:
    """A facility's two private keys; only the facility's own jobs ever hold this object."""

    name: str
    identity: Ed25519PrivateKey
    agreement: X25519PrivateKey

    @property
    def public(self) -> PublicKeys:
        return PublicKeys(identity=self.identity.public_key().public_bytes_raw(),
                          agreement=self.agreement.public_key().public_bytes_raw())

    @classmethod
    def load_or_create(cls, name: str, directory: Path) -> FacilityKeys:
        """The keys in `directory`, created there (mode 0700, files 0600) on the facility's first round.

        A key file others can read is refused rather than used: whoever reads it can unmask this
        facility's updates together with the server.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = _load_or_create(directory / IDENTITY_FILE,
                                   lambda: Ed25519PrivateKey.generate().private_bytes_raw())
        agreement = _load_or_create(directory / AGREEMENT_FILE,
                                    lambda: X25519PrivateKey.generate().private_bytes_raw())
        return cls(name=name, identity=Ed25519PrivateKey.from_private_bytes(identity),
                   agreement=X25519PrivateKey.from_private_bytes(agreement))

    def advertisement(self) -> dict[str, Any]:
        """The signed message that tells the server (and through it the others) this facility's public keys."""
        return sign({"kind": ADVERT_KIND, "facility": self.name, **self.public.to_json()}, self.identity)


def _load_or_create(path: Path, make: Any) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecAggError(f"{path}: a secure-aggregation key readable by others (mode {oct(mode & 0o777)}); "
                              f"run `chmod 600 {path}` or delete it to make a new one") from None
        data = path.read_bytes()
        if len(data) != 32:
            raise SecAggError(f"{path}: expected a 32-byte raw key, found {len(data)} bytes; "
                              "delete it to make a new one") from None
        return data
    data = make()
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return data


class KeyPins:
    """The server's pinned identity keys, facility by facility (trust on first use, kept in the run)."""

    def __init__(self, pinned: dict[str, PublicKeys] | None = None):
        self._pinned = dict(pinned or {})

    def accept(self, message: object, *, facility: str) -> PublicKeys:
        """Check an advertisement from `facility` and pin its keys on first sight; SecAggRejected otherwise.

        The advertisement is self-signed: its signature proves the sender holds the identity key it
        names; the pin makes sure that key stays the same for the rest of the run.
        """
        if not isinstance(message, dict):
            raise SecAggRejected(f"{ADVERT_KIND} from {facility}: expected a JSON object")
        claimed = PublicKeys.from_json(message, who=facility)
        body = verify(message, claimed.identity, kind=ADVERT_KIND, who=facility)
        if body.get("facility") != facility:
            raise SecAggRejected(f"{ADVERT_KIND} from {facility}: it names facility {body.get('facility')!r}")
        pinned = self._pinned.get(facility)
        if pinned is not None and pinned != claimed:
            raise SecAggRejected(f"{ADVERT_KIND} from {facility}: its keys differ from the ones pinned on first "
                                 "sight; if the facility really made new keys, start a new run")
        self._pinned[facility] = claimed
        return claimed

    def __contains__(self, facility: object) -> bool:
        return facility in self._pinned

    def get(self, facility: str) -> PublicKeys:
        if facility not in self._pinned:
            raise SecAggRejected(f"no pinned keys for facility {facility!r}: its key advertisement never arrived")
        return self._pinned[facility]

    def to_json(self) -> dict[str, dict[str, str]]:
        return {name: keys.to_json() for name, keys in sorted(self._pinned.items())}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyPins:
        return cls({name: PublicKeys.from_json(entry, who=name) for name, entry in data.items()})
