"""The gate an update passes before it counts in a round.

Beyond the format checks of `ExchangeDir.verify` (hashes, names, shapes,
dtypes, finiteness, base-model fingerprint), the server checks that the update
belongs to this round and, when configured, that it did not move too far from
the global (a diverged or malicious facility).
"""

from __future__ import annotations

import math

import torch

from fedhpc.errors import UpdateRejected
from fedhpc.exchange import ExchangeDir


def verify_update(
    update: ExchangeDir,
    global_: ExchangeDir,
    *,
    expected_round: int,
    fingerprint: str | None,
    max_norm: float | None = None,
) -> None:
    manifest = update.manifest
    if manifest.kind != "update":
        raise UpdateRejected("bad_manifest", f"{update.path}: kind is {manifest.kind!r}, expected 'update'")
    if manifest.round != expected_round:
        raise UpdateRejected("round", f"{update.path}: trained for round {manifest.round}, expected {expected_round}")
    shapes = {name: entry.shape for name, entry in global_.manifest.tensors.items()}
    update.verify(expected_shapes=shapes, fingerprint=fingerprint)
    if max_norm is not None:
        distance = update_distance(update, global_)
        if distance > max_norm:
            raise UpdateRejected(
                "norm", f"{update.path}: L2 distance from the global is {distance:.4g} > max_update_norm {max_norm:g}"
            )


def update_distance(update: ExchangeDir, global_: ExchangeDir) -> float:
    """‖update − global‖₂ over all tensors, streamed one tensor at a time."""
    total = 0.0
    for name in global_.names():
        difference = update.get(name).to(torch.float32) - global_.get(name).to(torch.float32)
        total += float(difference.square().sum())
    return math.sqrt(total)
