"""Facility jobs as the server sees them: launch, watch, collect, cancel.

Shared by the synchronous round loop and the asynchronous one; neither knows
how a job is started (launcher) or how files travel (mover). Every step is
recorded as an event, so the ledger tells each job's story.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhpc.aggregate import Update
from fedhpc.config import Experiment, FacilityConfig
from fedhpc.errors import TransferError, UpdateRejected
from fedhpc.exchange import ExchangeDir, TrainSettings, WorkerTask
from fedhpc.exchange.delta import DeltaUpdateDir
from fedhpc.facility.base import JobHandle, JobSpec, JobState, Launcher, Mover
from fedhpc.report.progress import ProgressView
from fedhpc.clock import Clock
from fedhpc.run.events import EventLog
from fedhpc.run.interrupts import OnInterrupt, StopFlag
from fedhpc.run.rundir import RunDir
from fedhpc.run.sample_caps import sample_cap
from fedhpc.run.verification import verify_update

log = logging.getLogger(__name__)
_RELAUNCH_SUFFIX = re.compile(r"-a\d+$")


@dataclass
class Facility:
    config: FacilityConfig
    launcher: Launcher
    mover: Mover


@dataclass
class Attempt:
    """One facility job, trained from global `round - 1` for `round`."""

    facility: str
    round: int
    attempt_id: str
    local_steps: int
    seed: int
    handle: JobHandle | None  # None: the job's update was already published when a resumed server found it
    started_at: float
    last_step: int = field(default=-1)
    seen_running: bool = field(default=False)

    @property
    def update_rel(self) -> str:
        return f"updates/{self.attempt_id}"

    @property
    def progress_rel(self) -> str:
        return f"progress/{self.attempt_id}.json"

    def record(self) -> dict[str, object]:
        """What a resumed server needs to reattach to, or re-run, this exact job."""
        return {
            "facility": self.facility,
            "round": self.round,
            "attempt_id": self.attempt_id,
            "local_steps": self.local_steps,
            "seed": self.seed,
            "started_at": self.started_at,
        }


def attempt_from_record(record: dict[str, Any]) -> Attempt:
    """The `Attempt` an `Attempt.record()` describes, not yet reattached (no handle)."""
    return Attempt(
        facility=record["facility"],
        round=int(record["round"]),
        attempt_id=record["attempt_id"],
        local_steps=int(record["local_steps"]),
        seed=int(record["seed"]),
        handle=None,
        started_at=float(record["started_at"]),
    )


class Jobs:
    def __init__(
        self,
        experiment: Experiment,
        run_dir: RunDir,
        facilities: dict[str, Facility],
        events: EventLog,
        progress: ProgressView,
        clock: Clock,
        base_fingerprint: str | None,
        stop: StopFlag | None = None,
    ):
        self.experiment = experiment
        self.run_dir = run_dir
        self.facilities = facilities
        self.events = events
        self.progress = progress
        self.clock = clock
        self.base_fingerprint = base_fingerprint
        self.stop = stop or StopFlag()
        self._bad_progress: set[str] = set()  # facilities whose progress.json was unreadable (logged once)
        self._ids: dict[str, set[str]] = {}  # attempt ids each facility has used: the ledger's, read once

    # --- launching -------------------------------------------------------------------------------

    def launch(
        self, round: int, facility_name: str, local_steps: int, staged: Path, seed: int, attempt_id: str,
        restore_at: float | None = None,
    ) -> Attempt:
        """Stage global `round - 1` if the facility lacks it, write the task, submit the job.

        With `restore_at` (a resumed server restoring a job it had launched at that time), the job
        is first reattached to (`reattached`), or its published update taken as it is
        (`collected_after_restart`); only a job gone without an update is run again, under a new
        attempt id (`relaunched`). A new job never takes an id the facility has used before.
        """
        facility = self.facilities[facility_name]
        mover = facility.mover
        global_rel = f"global/r{round - 1:04d}"
        started = self.clock.now()
        if not mover.exists(global_rel):
            moved = mover.push(staged, global_rel)
            self.events.record("staged", round, facility_name, bytes=moved, seconds=self.clock.now() - started,
                               start=started)
        fresh = self.fresh_attempt_id(facility_name, attempt_id)
        if restore_at is not None and fresh != attempt_id:  # launched before: take it in if it is there
            attempt = Attempt(facility_name, round, attempt_id, local_steps, seed, None, restore_at)
            if self._restored(attempt):
                return attempt
            self.events.record("relaunched", round, facility_name, attempt=fresh, previous=attempt_id,
                               reason="the job is gone and published no update")
        attempt_id = fresh  # (an id planned but never launched, such as an async job's, is launched as it is)
        self.stop.check()  # no new submission once the server is asked to stop
        attempt = Attempt(facility_name, round, attempt_id, local_steps, seed, None, self.clock.now())
        spec = self._job_spec(attempt)
        self.events.record("launching", round, facility_name, attempt=attempt_id, local_steps=local_steps, seed=seed,
                           started_at=attempt.started_at)  # before the job exists: its id is taken even if we die
        self._used_ids(facility_name).add(attempt_id)
        attempt.handle = facility.launcher.submit(spec)
        self.events.record("submitted", round, facility_name, job_id=attempt.handle.job_id, attempt=attempt_id,
                           local_steps=local_steps, start=attempt.handle.submitted_at)
        self.progress.facility_state(facility_name, "submitted", round)
        return attempt

    def _restored(self, attempt: Attempt) -> bool:
        """Take in a job a killed (or interrupted) server launched: reattach to it, or to its published update."""
        facility = self.facilities[attempt.facility]
        spec = self._job_spec(attempt)
        handle = facility.launcher.reattach(spec, attempt.started_at)
        if handle is not None:
            attempt.handle = handle
            self.events.record("reattached", attempt.round, attempt.facility, job_id=handle.job_id,
                               attempt=attempt.attempt_id)
            self.progress.facility_state(attempt.facility, "reattached", attempt.round)
            return True
        if facility.mover.exists(f"{attempt.update_rel}/manifest.json"):
            self.events.record("collected_after_restart", attempt.round, attempt.facility,
                               attempt=attempt.attempt_id)
            return True
        return False

    def fresh_attempt_id(self, facility: str, wanted: str) -> str:
        """`wanted`, or else its next `-aN` form that the facility has never used.

        Used means recorded in the ledger (any event naming it, `launching` first of all) or
        present in the facility's staging area (a task or an update directory): an orphaned job
        of a killed server may still publish there, and must not overwrite its successor's update.
        """
        used = self._used_ids(facility)
        if wanted not in used and not self._in_staging(facility, wanted):
            return wanted
        stem = _RELAUNCH_SUFFIX.sub("", wanted)
        n = 1
        while f"{stem}-a{n}" in used or self._in_staging(facility, f"{stem}-a{n}"):
            n += 1
        return f"{stem}-a{n}"

    def _used_ids(self, facility: str) -> set[str]:
        """Read from the ledger once; this server adds each id it launches (it is the ledger's only writer)."""
        if facility not in self._ids:
            self._ids[facility] = self.events.ledger.attempt_ids(facility)
        return self._ids[facility]

    def _in_staging(self, facility: str, attempt_id: str) -> bool:
        mover = self.facilities[facility].mover
        return mover.exists(f"updates/{attempt_id}") or mover.exists(f"tasks/{attempt_id}")

    def settle_interrupted(self, attempts: list[Attempt], mode: OnInterrupt) -> tuple[list[Attempt], list[Attempt]]:
        """The server is stopping: leave each job in flight running for a resume, or cancel it; both recorded.

        `mode` decides (`auto`: kept only if every one runs on a batch launcher, whose allocation is
        paid for); a second signal (`StopFlag.hurried`) cancels regardless. Returns (kept, cancelled).
        """
        kinds = {self.facilities[a.facility].config.launcher.kind for a in attempts}
        keep = mode.keeps(kinds) and not self.stop.hurried
        kept, cancelled = [], []
        for attempt in attempts:
            if keep:
                self.events.record("job_kept", attempt.round, attempt.facility, attempt=attempt.attempt_id,
                                   job_id=attempt.handle.job_id if attempt.handle is not None else None,
                                   reason="the server was interrupted; a resume collects this job's update")
                kept.append(attempt)
            else:
                self.cancel(attempt, "job_cancelled", f"the server was interrupted (--on-interrupt {mode.value})")
                cancelled.append(attempt)
        return kept, cancelled

    def _job_spec(self, attempt: Attempt) -> JobSpec:
        facility = self.facilities[attempt.facility]
        mover, config, algorithm = facility.mover, facility.config, self.experiment.algorithm
        task = WorkerTask(
            round=attempt.round,
            facility=attempt.facility,
            global_dir=Path(mover.facility_path(f"global/r{attempt.round - 1:04d}")),
            update_dir=Path(mover.facility_path(attempt.update_rel)),
            progress_file=Path(mover.facility_path(attempt.progress_rel)),
            data=config.data,
            model=self.experiment.model,
            data_config=self.experiment.data,
            train=TrainSettings(
                local_steps=attempt.local_steps,
                lr=algorithm.lr,
                weight_decay=algorithm.weight_decay,
                batch_size=algorithm.batch_size,
                seed=attempt.seed,
                proximal_mu=algorithm.proximal_mu,
            ),
            update_dtype=self.experiment.exchange.update_dtype,
            update_form=self.experiment.exchange.update_form,
            shard_bytes=int(self.experiment.exchange.shard_size),
            device=config.launcher.device,
        )
        task_dir = self.run_dir.log_dir(attempt.round) / f"{attempt.facility}-{attempt.attempt_id}-task"
        shutil.rmtree(task_dir, ignore_errors=True)
        task.write(task_dir / "task.json")
        if not mover.exists(f"tasks/{attempt.attempt_id}/task.json"):
            mover.push(task_dir, f"tasks/{attempt.attempt_id}")
        task_path = mover.facility_path(f"tasks/{attempt.attempt_id}/task.json")
        return JobSpec(
            name=f"{attempt.facility}-{attempt.attempt_id}",
            argv=[sys.executable, "-m", "fedhpc", "worker", "--task", task_path, *mover.worker_args()],
            log_dir=self.run_dir.log_dir(attempt.round),
            walltime_s=algorithm.round_timeout,
            task=task_path,
        )

    # --- watching --------------------------------------------------------------------------------

    def poll(self, pending: list[Attempt]) -> list[Attempt]:
        """Look at every pending job once; remove those that ended or timed out; return those that ended DONE."""
        done = []
        for attempt in list(pending):
            if attempt.handle is None:  # published before a resumed server found it
                pending.remove(attempt)
                done.append(attempt)
                continue
            facility = self.facilities[attempt.facility]
            status = facility.launcher.poll(attempt.handle)
            self._show_progress(attempt)
            if status.state.finished:
                pending.remove(attempt)
                self.events.record(
                    "job_finished",
                    attempt.round,
                    attempt.facility,
                    state=status.state.value,
                    returncode=status.returncode,
                    reason=status.reason[-2000:],
                    seconds=self.clock.now() - attempt.handle.submitted_at,
                    start=attempt.handle.submitted_at,
                    attempt=attempt.attempt_id,
                )
                if status.state is JobState.DONE:
                    done.append(attempt)
                else:
                    self.progress.facility_state(attempt.facility, status.state.value, attempt.round)
            elif self.clock.now() > self.timeout_at(attempt):
                pending.remove(attempt)
                facility.launcher.cancel(attempt.handle)
                self.events.record(
                    "job_finished",
                    attempt.round,
                    attempt.facility,
                    state="timeout",
                    reason=f"algorithm.round_timeout ({self.experiment.algorithm.round_timeout:g} s) passed",
                    seconds=self.clock.now() - attempt.handle.submitted_at,
                    start=attempt.handle.submitted_at,
                    attempt=attempt.attempt_id,
                )
                self.progress.facility_state(attempt.facility, "timeout", attempt.round)
            elif status.state is JobState.RUNNING and not attempt.seen_running:
                # the first look at a running job: what it waited in the scheduler's queue, to the poll interval
                self.events.record("job_running", attempt.round, attempt.facility, attempt=attempt.attempt_id,
                                   job_id=attempt.handle.job_id,
                                   queue_seconds=self.clock.now() - attempt.handle.submitted_at)
                self.progress.facility_state(attempt.facility, "running", attempt.round)
                attempt.seen_running = True
        return done

    def timeout_at(self, attempt: Attempt) -> float:
        """When a job is cancelled, whatever its round is doing."""
        return attempt.started_at + self.experiment.algorithm.round_timeout

    def cancel(self, attempt: Attempt, event: str, reason: str, round: int | None = None) -> None:
        """Cancel a job the run no longer waits for, recorded as `event` (e.g. `late_dropped`)."""
        if attempt.handle is not None:
            self.facilities[attempt.facility].launcher.cancel(attempt.handle)
        submitted = attempt.handle.submitted_at if attempt.handle is not None else attempt.started_at
        self.events.record(
            event,
            attempt.round if round is None else round,
            attempt.facility,
            job_id=attempt.handle.job_id if attempt.handle is not None else None,
            attempt=attempt.attempt_id,
            reason=reason,
            seconds=self.clock.now() - submitted,
            start=submitted,
        )

    def _show_progress(self, attempt: Attempt) -> None:
        raw = self.facilities[attempt.facility].mover.peek(attempt.progress_rel)
        if raw is None:
            return
        try:
            progress = json.loads(raw)
        except ValueError:
            return
        step = progress.get("step") if isinstance(progress, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            # the live view is a courtesy: a worker's malformed progress file must never stop the server
            if attempt.facility not in self._bad_progress:
                self._bad_progress.add(attempt.facility)
                log.debug("%s: %s is not an object with an integer step; ignored", attempt.facility,
                          attempt.progress_rel)
            return
        if step > attempt.last_step:
            attempt.last_step = step
            local_steps, loss = progress.get("local_steps"), progress.get("loss")
            self.progress.facility_progress(
                attempt.facility, step, local_steps if isinstance(local_steps, int) else 0,
                loss if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None,
            )

    # --- collecting ------------------------------------------------------------------------------

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
        metrics = ExchangeDir(destination).manifest.metrics
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
        )
        self.progress.facility_state(attempt.facility, "accepted", round)
        return update

    def _open_update(self, path: Path) -> ExchangeDir:
        """The update as the facility's weights; a delta is read on top of the global it names as its base."""
        update_dir = ExchangeDir(path)
        manifest = update_dir.manifest
        if manifest.update_form != "delta":
            return update_dir
        assert manifest.based_on_round is not None  # the manifest's own validation guarantees it
        base = self.run_dir.global_dir(manifest.based_on_round)
        if not base.exists():
            raise UpdateRejected(
                "stale", f"{path}: a delta from global {manifest.based_on_round}, which is no longer kept"
            )
        return DeltaUpdateDir(path, ExchangeDir(base))

    def reject(self, attempt: Attempt, round: int, reason: str, message: str) -> None:
        self.events.record("rejected", round, attempt.facility, reason=reason, message=message,
                           attempt=attempt.attempt_id)
        self.progress.facility_state(attempt.facility, f"rejected ({reason})", round)

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
                max_norm=self.experiment.algorithm.max_update_norm,
                sample_cap=sample_cap(known.config) if known is not None else None,
                asked_steps=asked_steps,
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
        )
