"""Secure aggregation in a synchronous round (docs/secure-aggregation.md): the server's whole part.

- Keys: a facility's public keys are asked for once per run by a key job (`secagg-keys`) the first
  time it takes part, and pinned in the ledger (meta `secagg_pins`); a later advertisement with other
  keys is refused.
- Each round: the round's roster (participants and their pinned keys, the threshold, the fixed point)
  goes into every training task; a facility publishes a masked update (`SecureIntake` checks it).
- Before the commit: one unmask job per survivor (`secagg-unmask`), then `SecureSum`, a tensor source
  that, tensor by tensor, adds the masked tensors, removes the masks and yields global + mean delta.
  The aggregator sees it as the round's one update, so FedAvg and the server optimisers apply it as
  they are. Below the threshold the round fails with `SecAggThresholdError` and nothing is committed.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedhpc.aggregate import Update
from fedhpc.config.secure_aggregation import SecureAggregationConfig
from fedhpc.errors import SecAggError, SecAggRejected, UpdateRejected
from fedhpc.exchange import ExchangeDir
from fedhpc.run.intake import Intake
from fedhpc.run.context import RunContext
from fedhpc.run.launches import Facility, Launches
from fedhpc.run.sample_caps import sample_cap
from fedhpc.run.secure_jobs import SecureJobs
from fedhpc.secagg.fixed_point import FixedPoint
from fedhpc.secagg.job_task import ADVERT_FILE, REPLY_FILE, keys_part, train_part, unmask_part
from fedhpc.secagg.keys import KeyPins
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.unmasking import Unmasker
from fedhpc.secagg.upload import MaskedUpload, read_masked_update

PINS_KEY = "secagg_pins"
RUN_ID_KEY = "secagg_run_id"  # bound into every pair seed and share key: nothing carries over between runs
SUM_NAME = "secure-sum"


class SecureRounds:
    def __init__(self, config: SecureAggregationConfig, launches: Launches):
        self.config = config
        self.launches = launches
        self.events = launches.events
        self.clock = launches.clock
        self.jobs = SecureJobs(launches)
        ledger = self.events.ledger
        self.run_id = ledger.get_meta(RUN_ID_KEY) or secrets.token_hex(16)
        ledger.set_meta(RUN_ID_KEY, self.run_id)
        pinned = ledger.get_meta(PINS_KEY)
        self.pins = KeyPins.from_json(json.loads(pinned)) if pinned else KeyPins()
        self.rosters: dict[int, RoundRoster] = {}

    def keys_dir(self, facility: str) -> str:
        """Where the facility's jobs keep its keys: configured, or in its staging area (never pulled)."""
        configured = self.config.keys_dirs.get(facility)
        return configured or self.launches.facilities[facility].mover.facility_path(f"secagg_keys/{facility}")

    def prepare(self, round: int, participants: list[str]) -> None:
        """Pin the keys of participants seen for the first time (one key job each), then fix the round's roster."""
        missing = [name for name in participants if name not in self.pins]
        if missing:
            adverts = self.jobs.run(round, "secagg-keys", {name: keys_part(self.keys_dir(name)) for name in missing},
                                    ADVERT_FILE)
            for name, advert in adverts.items():
                try:
                    self.pins.accept(advert, facility=name)
                    self.events.record("secagg_keys_pinned", round, name)
                except SecAggRejected as e:
                    self.events.record("secagg_rejected", round, name, reason=str(e))
            self.events.ledger.set_meta(PINS_KEY, json.dumps(self.pins.to_json()))
        usable = [name for name in participants if name in self.pins]
        self.rosters[round] = RoundRoster(
            run_id=self.run_id, round=round, threshold=self.config.round_threshold(len(usable)),
            fixed_point=FixedPoint(self.config.fractional_bits, self.config.value_range),
            participants={name: self.pins.get(name) for name in usable})

    def task_part(self, round: int, facility: str) -> dict | None:
        roster = self.rosters.get(round)
        if roster is None or facility not in roster.participants:
            raise SecAggError(f"round {round}: {facility} has no pinned keys (its key job failed); it cannot take "
                              "part in a securely aggregated round")
        return train_part(self.keys_dir(facility), roster)

    def aggregate(self, round: int, accepted: dict[str, Update], global_: ExchangeDir) -> tuple[list[Update], dict]:
        """The round's one update (global + mean delta) and what the ledger records of its unmasking."""
        roster = self.rosters[round]
        uploads: dict[str, MaskedUpload] = {name: update.source for name, update in accepted.items()}  # type: ignore[misc]
        started = self.clock.now()
        unmasker = Unmasker(roster, {name: upload.shares for name, upload in uploads.items()})
        request = unmasker.request()
        parts = {name: unmask_part(self.keys_dir(name), roster, request, unmasker.shares_messages)
                 for name in unmasker.survivors}
        for name, reply in self.jobs.run(round, "secagg-unmask", parts, REPLY_FILE).items():
            try:
                unmasker.accept(name, reply)
            except SecAggRejected as e:
                self.events.record("secagg_rejected", round, name, reason=str(e))
        unmasker.check()
        detail = {"survivors": unmasker.survivors, "dropped": unmasker.dropped, "threshold": roster.threshold,
                  "fractional_bits": roster.fixed_point.fractional_bits, "unmask_seconds": self.clock.now() - started}
        self.events.record("secagg_unmasked", round, **detail)
        update = Update(facility=SUM_NAME, source=SecureSum(global_, uploads, unmasker),
                        num_samples=sum(u.num_samples for u in accepted.values()),
                        local_steps=max(u.local_steps for u in accepted.values()), based_on_round=round - 1,
                        tokens=sum(u.tokens for u in accepted.values()))
        return [update], {"secure_aggregation": detail}


class SecureSum:
    """The round's mean update as a tensor source: global + (sum of the survivors' deltas) / survivors.

    Computed one tensor at a time when the aggregator asks for it: the masked tensors are added (uint64,
    wrapping), the masks removed, the sum decoded; memory is one tensor and its running sum, whatever
    the number of facilities.
    """

    def __init__(self, global_: ExchangeDir, uploads: dict[str, MaskedUpload], unmasker: Unmasker):
        self.global_ = global_
        self.uploads = [uploads[name] for name in sorted(uploads)]
        self.unmasker = unmasker

    def names(self) -> list[str]:
        return self.global_.names()

    def get(self, name: str) -> torch.Tensor:
        total: np.ndarray | None = None
        for upload in self.uploads:
            masked = upload.get(name)
            total = masked.copy() if total is None else np.add(total, masked, out=total)
        assert total is not None
        mean = self.unmasker.unmask(name, total) / len(self.uploads)
        return self.global_.get(name).to(torch.float32) + torch.from_numpy(mean.astype(np.float32))


class SecureIntake(Intake):
    """The intake of a securely aggregated run: each update is a masked upload (`fedhpc.secagg.upload`)."""

    accepted_marks = {"masked": True}

    def __init__(self, context: RunContext, facilities: dict[str, Facility], base_fingerprint: str | None,
                 secure: SecureRounds):
        super().__init__(context, facilities, base_fingerprint, max_norm=None)  # a masked update has no norm to see
        self.secure = secure

    def _metrics(self, update: Update, destination: Path) -> dict[str, Any]:
        """What the masked upload's signed record says its worker reported."""
        return update.source.metrics  # type: ignore[attr-defined]

    def verified(self, path: Path, facility: str | None, trained_round: int, global_: ExchangeDir,
                 asked_steps: int | None = None) -> Update:
        roster = self.secure.rosters.get(trained_round)
        if facility is None or roster is None or facility not in roster.participants:
            raise UpdateRejected("secagg", f"{path}: {facility} is not in round {trained_round}'s roster")
        shapes = {name: list(entry.shape) for name, entry in global_.manifest.tensors.items()}
        try:
            upload = read_masked_update(path, roster, facility, shapes)
        except SecAggRejected as e:
            raise UpdateRejected("secagg", str(e)) from None
        cap = sample_cap(self.facilities[facility].config)
        if cap is not None and upload.num_samples > cap.limit:
            raise UpdateRejected("num_samples", f"{path}: claims num_samples {upload.num_samples}, over the cap of "
                                 f"{cap.limit} ({cap.origin})")
        if asked_steps is not None and upload.local_steps > asked_steps:
            raise UpdateRejected("local_steps", f"{path}: claims {upload.local_steps} local steps, but its task "
                                 f"asked for {asked_steps}")
        tokens = upload.metrics.get("tokens", 0)
        return Update(facility=facility, source=upload, num_samples=upload.num_samples,  # type: ignore[arg-type]
                      local_steps=upload.local_steps, based_on_round=trained_round - 1,
                      tokens=tokens if type(tokens) is int and tokens >= 0 else 0)
