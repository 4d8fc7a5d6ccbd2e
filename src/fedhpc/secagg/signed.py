"""Canonical JSON, base64 fields and Ed25519 signatures: how every secure-aggregation message is sealed.

A message is a JSON object; its signature covers the canonical encoding (sorted keys, no spaces) of every
field but `signature`, prefixed by a domain label so a signature made for one kind of message can never
be replayed as another.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedhpc.errors import SecAggRejected

DOMAIN = b"fedhpc-secagg-v1|"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, *, what: str, size: int | None = None) -> bytes:
    """Decode a base64 field of an untrusted message; `what` names it in the error."""
    if not isinstance(text, str):
        raise SecAggRejected(f"{what}: expected a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise SecAggRejected(f"{what}: not base64 ({error})") from None
    if size is not None and len(data) != size:
        raise SecAggRejected(f"{what}: expected {size} bytes, got {len(data)}")
    return data


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """`body` with a `signature` field over its canonical encoding."""
    if "signature" in body:
        raise ValueError("a message is signed once")
    signature = key.sign(DOMAIN + str(body["kind"]).encode() + b"|" + canonical(body))
    return {**body, "signature": b64(signature)}


def verify(message: object, public_key: bytes, *, kind: str, who: str) -> dict[str, Any]:
    """The message's body once its signature checks against `public_key`; SecAggRejected otherwise."""
    if not isinstance(message, dict):
        raise SecAggRejected(f"{kind} from {who}: expected a JSON object")
    if message.get("kind") != kind:
        raise SecAggRejected(f"{kind} from {who}: message kind is {message.get('kind')!r}")
    body = {key: value for key, value in message.items() if key != "signature"}
    signature = unb64(message.get("signature"), what=f"{kind} from {who}: signature", size=64)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, DOMAIN + kind.encode() + b"|" + canonical(body))
    except InvalidSignature:
        raise SecAggRejected(f"{kind} from {who}: the signature does not match its identity key "
                             "(the message was altered or signed by another key)") from None
    return body
