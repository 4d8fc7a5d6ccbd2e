"""The gate an update passes before it counts in a round.

Beyond the format checks of `ExchangeDir.verify` (hashes, names, shapes,
dtypes, finiteness, base-model fingerprint), the server checks that the update
belongs to this round, that what it reports about itself is sane (its
`num_samples` within the facility's cap, its `metrics` of the types the worker
writes) and, when configured, that it did not move too far from the global (a
diverged or malicious facility).

A `num_samples` of 0 is accepted: weighting by samples gives that update zero
weight, and a round in which every update claims 0 falls back to equal weights
(`aggregation_weights`), so nothing divides by zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from fedhpc.errors import UpdateRejected
from fedhpc.exchange import ExchangeDir, Manifest
from fedhpc.run.sample_caps import SampleCap

# The JSON of the metrics the worker does not write (those below are checked one by one) is bounded:
# the server stores metrics in the ledger and shows them in the report.
MAX_OTHER_METRICS_BYTES = 64 * 1024


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _seconds(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


# What the worker writes in an update's metrics (fedhpc.worker.main `_meta`), and what each must be.
KNOWN_METRICS: dict[str, tuple[str, Any]] = {
    "tokens": ("a non-negative integer", _count),
    "samples_seen": ("a non-negative integer", _count),
    "train_seconds": ("a non-negative finite number", _seconds),
    "load_seconds": ("a non-negative finite number", _seconds),
    "world_size": ("a positive integer", lambda value: type(value) is int and value >= 1),
    "device": ("a short string", lambda value: isinstance(value, str) and len(value) <= 64),
    "sharded": ("true or false", lambda value: type(value) is bool),
}


def verify_update(
    update: ExchangeDir,
    global_: ExchangeDir,
    *,
    expected_round: int,
    fingerprint: str | None,
    max_norm: float | None = None,
    sample_cap: SampleCap | None = None,
    asked_steps: int | None = None,
) -> None:
    """Raise `UpdateRejected` unless the update may count; `asked_steps` is what the server's task asked for.

    `local_steps` is self-reported like `num_samples`, and with `weighting: steps` it is the
    facility's weight: more steps than the task asked for is a claim no honest worker makes.
    """
    manifest = update.manifest
    if manifest.kind != "update":
        raise UpdateRejected("bad_manifest", f"{update.path}: kind is {manifest.kind!r}, expected 'update'")
    if manifest.round != expected_round:
        raise UpdateRejected("round", f"{update.path}: trained for round {manifest.round}, expected {expected_round}")
    if sample_cap is not None and manifest.num_samples > sample_cap.limit:
        raise UpdateRejected(
            "num_samples",
            f"{update.path}: claims num_samples {manifest.num_samples}, over the cap of {sample_cap.limit} "
            f"({sample_cap.origin})",
        )
    if asked_steps is not None and manifest.local_steps > asked_steps:
        raise UpdateRejected(
            "local_steps",
            f"{update.path}: claims {manifest.local_steps} local steps, but its task asked for {asked_steps}",
        )
    check_metrics(update.path, manifest)
    shapes = {name: entry.shape for name, entry in global_.manifest.tensors.items()}
    update.verify(expected_shapes=shapes, fingerprint=fingerprint)
    if max_norm is not None:
        distance = update_distance(update, global_)
        if distance > max_norm:
            raise UpdateRejected(
                "norm", f"{update.path}: L2 distance from the global is {distance:.4g} > max_update_norm {max_norm:g}"
            )


def check_metrics(path: Path, manifest: Manifest) -> None:
    """Raise `bad_metrics` unless the metrics the worker writes have its types and the rest is small.

    The server records `loss`, `tokens` and the timings in the ledger after it
    accepts an update, and sums them in the report: a wrong type there would
    fail the server after the round's commit.
    """
    metrics = manifest.metrics
    loss = metrics.get("loss", [])
    if not isinstance(loss, list) or not all(type(x) in (int, float) and math.isfinite(x) for x in loss):
        raise UpdateRejected("bad_metrics", f"{path}: metrics.loss must be a list of finite numbers, one per step")
    if len(loss) > max(manifest.local_steps, 1):
        raise UpdateRejected(
            "bad_metrics", f"{path}: metrics.loss has {len(loss)} values for {manifest.local_steps} local steps"
        )
    for key, (expected, valid) in KNOWN_METRICS.items():
        if key in metrics and not valid(metrics[key]):
            raise UpdateRejected("bad_metrics", f"{path}: metrics.{key} is {metrics[key]!r:.80}, expected {expected}")
    others = {key: value for key, value in metrics.items() if key != "loss" and key not in KNOWN_METRICS}
    size = len(json.dumps(others))
    if size > MAX_OTHER_METRICS_BYTES:
        raise UpdateRejected(
            "bad_metrics", f"{path}: metrics other than the worker's take {size} bytes, over {MAX_OTHER_METRICS_BYTES}"
        )


def update_distance(update: ExchangeDir, global_: ExchangeDir) -> float:
    """‖update − global‖₂ over all tensors, streamed one tensor at a time."""
    total = 0.0
    for name in global_.names():
        difference = update.get(name).to(torch.float32) - global_.get(name).to(torch.float32)
        total += float(difference.square().sum())
    return math.sqrt(total)
