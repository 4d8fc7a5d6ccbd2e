"""Taking an update in: pull it, open it, verify it, record it accepted or rejected.

Each check lives in one place, and this module runs them in this order:
- the mover's `pull` copies the facility's directory into the run directory
  (a transfer that fails is rejected as `transfer`);
- `Intake._open_update` reads a delta on top of the global it names as its base
  (a base no longer kept is `stale`);
- `verify_update` holds what the update says about itself against the round:
  its kind and round, `num_samples` within the facility's cap (`sample_caps.py`),
  `local_steps` within what its task asked, the metrics the worker writes,
  `metrics.tokens` within what those steps of its recipe can hold, and (when
  configured) its distance from the global;
- within it, `ExchangeDir.verify` (exchange/reader.py) is the format's own check
  of the directory: its listing, files, hashes, headers, shapes, dtypes,
  finiteness and base-model fingerprint.

A `num_samples` of 0 is accepted: weighting by samples gives that update zero
weight, and a round in which every update claims 0 falls back to equal weights
(`aggregation_weights`), so nothing divides by zero.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from fedhpc.aggregate import Update
from fedhpc.config.recipe import EffectiveRecipe
from fedhpc.errors import TransferError, UpdateRejected
from fedhpc.exchange import ExchangeDir, Manifest
from fedhpc.exchange.delta import DeltaUpdateDir
from fedhpc.run.context import RunContext
from fedhpc.run.launches import Attempt, Facility
from fedhpc.run.sample_caps import SampleCap, sample_cap

# The JSON of the metrics the worker does not write (those below are checked one by one) is bounded:
# the server stores metrics in the ledger and shows them in the report.
MAX_OTHER_METRICS_BYTES = 64 * 1024


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _seconds(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


# What the worker writes in an update's metrics (`fedhpc.worker.train_recipe.TrainRecipe._meta`), and what each must be.
KNOWN_METRICS: dict[str, tuple[str, Any]] = {
    "tokens": ("a non-negative integer", _count),
    "samples_seen": ("a non-negative integer", _count),
    "train_seconds": ("a non-negative finite number", _seconds),
    "load_seconds": ("a non-negative finite number", _seconds),
    "world_size": ("a positive integer", lambda value: type(value) is int and value >= 1),
    "device": ("a short string", lambda value: isinstance(value, str) and len(value) <= 64),
    "sharded": ("true or false", lambda value: type(value) is bool),
    # example-level DP (fedhpc.worker.dp_sgd): the facility's ε over every round it trained, shown by the server
    "example_epsilon": ("a non-negative finite number", _seconds),
}
# The per-step series the worker writes: one finite number per optimizer step, so they grow with the
# job's steps and are bounded by them, not by MAX_OTHER_METRICS_BYTES (a 5,000-step job's lr list alone
# is about 100 KB).
PER_STEP_METRICS = ("loss", "lr", "grad_norm")


def verify_update(
    update: ExchangeDir,
    global_: ExchangeDir,
    *,
    expected_round: int,
    fingerprint: str | None,
    max_norm: float | None = None,
    sample_cap: SampleCap | None = None,
    asked_steps: int | None = None,
    recipe: EffectiveRecipe | None = None,
) -> None:
    """Raise `UpdateRejected` unless the update may count; `asked_steps` is what the server's task asked for.

    `local_steps` is self-reported like `num_samples`, and with `weighting: steps` it is the
    facility's weight: more steps than the task asked for is a claim no honest worker makes.
    So is `metrics.tokens`, the weight under `weighting: tokens`: it is held to what the claimed
    steps of the facility's `recipe` can hold (`EffectiveRecipe.max_tokens`).
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
    if recipe is not None:
        check_tokens(update.path, manifest, recipe)
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
    for key in PER_STEP_METRICS:
        series = metrics.get(key, [])
        if not isinstance(series, list) or not all(type(x) in (int, float) and math.isfinite(x) for x in series):
            raise UpdateRejected("bad_metrics", f"{path}: metrics.{key} must be a list of finite numbers, one per step")
        if len(series) > max(manifest.local_steps, 1):
            raise UpdateRejected(
                "bad_metrics", f"{path}: metrics.{key} has {len(series)} values for {manifest.local_steps} local steps"
            )
    for key, (expected, valid) in KNOWN_METRICS.items():
        if key in metrics and not valid(metrics[key]):
            raise UpdateRejected("bad_metrics", f"{path}: metrics.{key} is {metrics[key]!r:.80}, expected {expected}")
    others = {key: value for key, value in metrics.items() if key not in PER_STEP_METRICS and key not in KNOWN_METRICS}
    size = len(json.dumps(others))
    if size > MAX_OTHER_METRICS_BYTES:
        raise UpdateRejected(
            "bad_metrics", f"{path}: metrics other than the worker's take {size} bytes, over {MAX_OTHER_METRICS_BYTES}"
        )


def check_tokens(path: Path, manifest: Manifest, recipe: EffectiveRecipe) -> None:
    """Raise `tokens` when `metrics.tokens` exceeds every sequence of every claimed step filled to seq_len."""
    tokens = manifest.metrics.get("tokens", 0)
    cap = recipe.max_tokens(manifest.local_steps)
    if tokens > cap:
        raise UpdateRejected(
            "tokens",
            f"{path}: claims metrics.tokens {tokens}, over the {cap} its {manifest.local_steps} local steps can hold "
            f"(micro-batch {recipe.batch_size} × grad_accum_steps {recipe.grad_accum_steps} × {recipe.ranks} "
            f"rank(s) × seq_len {recipe.seq_len} per step, facility {recipe.facility}'s recipe)",
        )


def update_distance(update: ExchangeDir, global_: ExchangeDir) -> float:
    """‖update − global‖₂ over all tensors, streamed one tensor at a time."""
    total = 0.0
    for name in global_.names():
        difference = update.get(name).to(torch.float32) - global_.get(name).to(torch.float32)
        total += float(difference.square().sum())
    return math.sqrt(total)


class Intake:
    """The server's gate for every facility's updates; `max_norm` is `algorithm.max_update_norm`."""

    accepted_marks: dict[str, object] = {}  # fields every `accepted` event of this intake carries

    def __init__(
        self, context: RunContext, facilities: dict[str, Facility], base_fingerprint: str | None,
        max_norm: float | None,
    ):
        self.context = context
        self.events = context.events
        self.clock = context.clock
        self.facilities = facilities
        self.base_fingerprint = base_fingerprint
        self.max_norm = max_norm

    def collect(self, attempt: Attempt, round: int, global_: ExchangeDir, destination: Path) -> Update | None:
        """Pull and verify one finished job's update, to be applied to `global_` (which becomes `round`).

        A bad update is recorded as `rejected`, not raised. An update trained from an older
        global than `global_` counts with its `staleness` (rounds or versions behind).
        """
        shutil.rmtree(destination, ignore_errors=True)
        started = self.clock.now()
        try:
            moved = self.facilities[attempt.facility].mover.pull(attempt.update_rel, destination)
            self.events.record("pulled", round, attempt.facility, bytes=moved, seconds=self.clock.now() - started,
                               start=started, attempt=attempt.attempt_id)
            update = self.verified(destination, attempt.facility, attempt.round, global_, attempt.local_steps)
        except (UpdateRejected, TransferError) as e:
            self.reject(attempt, round, e.reason if isinstance(e, UpdateRejected) else "transfer", str(e))
            return None
        metrics = self._metrics(update, destination)
        self.events.record(
            "accepted",
            round,
            attempt.facility,
            num_samples=update.num_samples,
            local_steps=update.local_steps,
            loss=metrics.get("loss", []),
            tokens=metrics.get("tokens"),
            train_seconds=metrics.get("train_seconds"),
            load_seconds=metrics.get("load_seconds"),
            staleness=update.staleness,
            attempt=attempt.attempt_id,
            path=str(destination),
            # example-level DP: the facility's ε over its rounds, in the ledger and metrics.jsonl (absent: off)
            **{key: metrics[key] for key in ("example_epsilon",) if key in metrics},
            **self.accepted_marks,
        )
        return update

    def _metrics(self, update: Update, destination: Path) -> dict[str, Any]:
        """What the accepted update's worker reported: its manifest's metrics."""
        return ExchangeDir(destination).manifest.metrics

    def _open_update(self, path: Path) -> ExchangeDir:
        """The update as the facility's weights; a delta is read on top of the global it names as its base."""
        update_dir = ExchangeDir(path)
        manifest = update_dir.manifest
        if manifest.update_form != "delta":
            return update_dir
        assert manifest.based_on_round is not None  # the manifest's own validation guarantees it
        base = self.context.run_dir.global_dir(manifest.based_on_round)
        if not base.exists():
            raise UpdateRejected(
                "stale", f"{path}: a delta from global {manifest.based_on_round}, which is no longer kept"
            )
        return DeltaUpdateDir(path, ExchangeDir(base))

    def reject(self, attempt: Attempt, round: int, reason: str, message: str) -> None:
        self.events.record("rejected", round, attempt.facility, reason=reason, message=message,
                           attempt=attempt.attempt_id)

    def verified(
        self, path: Path, facility: str | None, trained_round: int, global_: ExchangeDir, asked_steps: int | None = None
    ) -> Update:
        """Verify an update trained for `trained_round` against `global_` (the global it will be aggregated into).

        Everything in it came from the facility: its `num_samples` is held to the
        facility's cap (`run.sample_caps`), and a rejected update is closed here.
        """
        update_dir = self._open_update(path)
        known = self.facilities.get(facility) if facility is not None else None
        try:
            verify_update(
                update_dir,
                global_,
                expected_round=trained_round,
                fingerprint=self.base_fingerprint,
                max_norm=self.max_norm,
                sample_cap=sample_cap(known.config) if known is not None else None,
                asked_steps=asked_steps,
                recipe=known.recipe if known is not None else None,
            )
        except BaseException:
            update_dir.close()
            raise
        manifest = update_dir.manifest
        based_on = manifest.based_on_round if manifest.based_on_round is not None else trained_round - 1
        return Update(
            facility=facility or manifest.facility or "",
            source=update_dir,
            num_samples=manifest.num_samples,
            local_steps=manifest.local_steps,
            based_on_round=based_on,
            staleness=global_.manifest.round - based_on,
            tokens=manifest.metrics.get("tokens", 0),
        )
