"""A 32-byte seed expanded into a uint64 mask for one tensor (ChaCha20 keystream).

The key of the stream is HKDF(seed, tensor name), so every tensor gets its own stream and a mask is
made, added and dropped one tensor at a time: memory stays one tensor whatever the model's size.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = bytes(16)  # each (seed, tensor) has its own key, so one fixed nonce never repeats a stream


def mask(seed: bytes, name: str, count: int) -> np.ndarray:
    """`count` pseudo-random uint64 values from `seed` for tensor `name`; both ends compute the same."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"fedhpc-secagg-v1|prg|" + name.encode()).derive(seed)
    stream = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor().update(bytes(8 * count))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=False)
