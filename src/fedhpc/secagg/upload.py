"""A masked update as it crosses to the server: `masked.safetensors` (uint64) and a signed `upload.json`.

Not an exchange directory on purpose: its tensors are ring elements, meaningless one by one, and the
exchange format's checks (finiteness, norms, float dtypes) do not apply to them. `upload.json` is
signed by the facility's identity key and names the SHA-256 of the tensor file, so the pair is
authenticated as a whole; it also carries the facility's shares message and what the server records
of the job (samples, steps, the loss curve). Everything here is checked as untrusted input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from fedhpc.errors import SecAggRejected
from fedhpc.secagg.masking import MaskedRound
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.shares import checked_shares_message
from fedhpc.secagg.signed import sign, verify

TENSORS_FILE = "masked.safetensors"
UPLOAD_FILE = "upload.json"
UPLOAD_KIND = "secagg-upload"
MAX_UPLOAD_JSON_BYTES = 16 * 1024 * 1024  # a per-step loss curve and K shares: far below this


def write_masked_update(directory: Path, masking: MaskedRound, deltas: Iterable[tuple[str, np.ndarray]],
                        record: dict[str, Any]) -> None:
    """Mask each delta tensor and write both files into `directory` (which the caller publishes atomically).

    `record`: num_samples, local_steps and metrics, as the server records them for the job.
    """
    masked = {name: masking.mask(name, values) for name, values in deltas}
    path = directory / TENSORS_FILE
    save_file(masked, str(path))
    body = {"kind": UPLOAD_KIND, "run_id": masking.roster.run_id, "round": masking.roster.round,
            "facility": masking.keys.name, "tensors": {name: list(t.shape) for name, t in masked.items()},
            "sha256": _sha256(path), "shares": masking.share_message(), **record}
    (directory / UPLOAD_FILE).write_text(json.dumps(sign(body, masking.keys.identity)))


@dataclass
class MaskedUpload:
    """A verified masked update: its tensors are read one at a time (`get`), never all at once."""

    facility: str
    path: Path
    num_samples: int
    local_steps: int
    metrics: dict[str, Any]
    shares: dict[str, Any]

    def get(self, name: str) -> np.ndarray:
        with safe_open(str(self.path / TENSORS_FILE), framework="numpy") as handle:
            return handle.get_tensor(name)


def read_masked_update(directory: Path, roster: RoundRoster, facility: str,
                       expected_shapes: dict[str, list[int]]) -> MaskedUpload:
    """`facility`'s upload, checked whole: signature, round, file digest, tensor names, shapes and dtype."""
    where = f"{directory}"
    try:
        message = json.loads(_regular_bytes(directory / UPLOAD_FILE, MAX_UPLOAD_JSON_BYTES))
    except ValueError:
        raise SecAggRejected(f"{where}: {UPLOAD_FILE} is not JSON") from None
    body = verify(message, roster.participants[facility].identity, kind=UPLOAD_KIND, who=facility)
    if (body.get("run_id"), body.get("round"), body.get("facility")) != (roster.run_id, roster.round, facility):
        raise SecAggRejected(f"{where}: an upload for run {body.get('run_id')!r} round {body.get('round')!r} by "
                             f"{body.get('facility')!r}, not {facility} in round {roster.round}")
    if body.get("tensors") != expected_shapes:
        raise SecAggRejected(f"{where}: its tensors and shapes are not the global's")
    _regular_bytes(directory / TENSORS_FILE, None)
    if _sha256(directory / TENSORS_FILE) != body.get("sha256"):
        raise SecAggRejected(f"{where}: {TENSORS_FILE} does not match the digest its signed upload.json names")
    with safe_open(str(directory / TENSORS_FILE), framework="numpy") as handle:
        if sorted(handle.keys()) != sorted(expected_shapes):
            raise SecAggRejected(f"{where}: {TENSORS_FILE} holds other tensors than upload.json lists")
        for name in handle.keys():
            info = handle.get_slice(name)
            if info.get_dtype() != "U64" or list(info.get_shape()) != expected_shapes[name]:
                raise SecAggRejected(f"{where}: tensor {name!r} is {info.get_dtype()}{info.get_shape()}, "
                                     f"expected U64{expected_shapes[name]}")
    checked_shares_message(body.get("shares"), roster, facility)
    samples, steps, metrics = body.get("num_samples"), body.get("local_steps"), body.get("metrics")
    if type(samples) is not int or samples < 0 or type(steps) is not int or steps < 1 or not isinstance(metrics, dict):
        raise SecAggRejected(f"{where}: num_samples, local_steps and metrics must be counts and an object")
    loss = metrics.get("loss", [])
    if not (isinstance(loss, list) and len(loss) <= steps
            and all(type(x) in (int, float) and math.isfinite(x) for x in loss)):
        raise SecAggRejected(f"{where}: metrics.loss must be at most local_steps finite numbers")
    return MaskedUpload(facility, directory, samples, steps, metrics, body["shares"])


def _regular_bytes(path: Path, limit: int | None) -> bytes:
    """A regular file's bytes (no symlink, no device), at most `limit`; the name came from nobody but us."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise SecAggRejected(f"{path}: missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecAggRejected(f"{path}: not a regular file")
    if limit is None:
        return b""
    if info.st_size > limit:
        raise SecAggRejected(f"{path}: {info.st_size} bytes, over {limit}")
    return path.read_bytes()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
