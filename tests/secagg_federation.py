"""A federation of facilities running the secure-aggregation protocol in one process, for the secagg tests.

Each facility has real keys in its own directory, masks real fp32 tensors, and answers the server's
unmask request from the shares messages the server forwards; `secure_sum` plays the whole round the way
the server and the facilities would across files, returning the server's float64 sums.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedhpc.secagg.fixed_point import FixedPoint
from fedhpc.secagg.keys import FacilityKeys, KeyPins
from fedhpc.secagg.masking import MaskedRound
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.unmask_reply import unmask_reply
from fedhpc.secagg.unmasking import Unmasker

SHAPES = {"layers.0.lora_A": (4, 16), "layers.0.lora_B": (16, 4), "head.bias": (7,)}


def facility_names(count: int) -> list[str]:
    return [f"site-{chr(ord('a') + i)}" for i in range(count)]


def make_keys(tmp_path: Path, count: int) -> dict[str, FacilityKeys]:
    return {name: FacilityKeys.load_or_create(name, tmp_path / name / "keys") for name in facility_names(count)}


def default_threshold(count: int) -> int:
    return max(2, math.ceil(2 * count / 3), count // 2 + 1)


def make_roster(keys: dict[str, FacilityKeys], threshold: int | None = None, fixed: FixedPoint | None = None,
                round: int = 1) -> RoundRoster:
    pins = KeyPins()
    for name, facility in keys.items():
        pins.accept(facility.advertisement(), facility=name)
    return RoundRoster(run_id="run-1", round=round, threshold=threshold or default_threshold(len(keys)),
                       fixed_point=fixed or FixedPoint(), participants={name: pins.get(name) for name in keys})


def updates(names: list[str], seed: int = 0, scale: float = 0.05) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {name: {tensor: (rng.standard_normal(shape) * scale).astype(np.float32)
                   for tensor, shape in SHAPES.items()} for name in names}


def masked_uploads(keys: dict[str, FacilityKeys], roster: RoundRoster, plain: dict[str, dict[str, np.ndarray]]):
    """What each facility uploads: its masked tensors and its shares message."""
    uploads = {}
    for name, tensors in plain.items():
        masking = MaskedRound(keys[name], roster)
        uploads[name] = ({tensor: masking.mask(tensor, values) for tensor, values in tensors.items()},
                         masking.share_message())
    return uploads


def secure_sum(keys, roster, plain, *, silent: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The server's sums of `plain`'s facilities (those that uploaded); `silent` ones skip the unmask answer."""
    uploads = masked_uploads(keys, roster, plain)
    unmasker = Unmasker(roster, {name: shares for name, (_, shares) in uploads.items()})
    request = unmasker.request()
    for name in unmasker.survivors:
        if name not in silent:
            unmasker.accept(name, unmask_reply(keys[name], roster, request, unmasker.shares_messages))
    sums = {}
    for tensor in SHAPES:
        total = None
        for masked, _ in uploads.values():
            total = masked[tensor].copy() if total is None else total + masked[tensor]
        sums[tensor] = unmasker.unmask(tensor, total)
    return sums
