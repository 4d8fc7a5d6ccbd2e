"""Facility jobs as the server sees them: launch, watch, cancel.

Shared by the synchronous round loop and the asynchronous one; neither knows
how a job is started (launcher) or how files travel (mover). Every step is
recorded as an event, so the ledger tells each job's story, and the progress
view shows the job's state from those events (`ProgressView.on_event`); only
the live step count, read from the job's progress file, is reported directly.
What a finished job published is taken in by `intake.py`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhpc.config import AlgorithmConfig, ExchangeConfig, FacilityConfig
from fedhpc.config.compression import compression_for
from fedhpc.config.example_privacy import ExamplePrivacyJob
from fedhpc.config.recipe import EffectiveRecipe
from fedhpc.exchange import LrSchedule, TrainSettings, WorkerTask
from fedhpc.facility.base import JobHandle, JobSpec, JobState, Launcher, Mover
from fedhpc.run.context import RunContext
from fedhpc.run.interrupts import OnInterrupt

log = logging.getLogger(__name__)
_RELAUNCH_SUFFIX = re.compile(r"-a\d+$")


@dataclass
class Facility:
    """A facility as the run drives it: its config, the launcher that runs its jobs, the mover its files take,
    and the recipe its jobs train with (`Experiment.recipe_for`)."""

    config: FacilityConfig
    launcher: Launcher
    mover: Mover
    recipe: EffectiveRecipe


def federation_schedule(algorithm: AlgorithmConfig) -> LrSchedule | None:
    """`algorithm.lr_schedule` as every task carries it, over the run's rounds × local_steps federation steps."""
    schedule = algorithm.lr_schedule
    if not schedule.active:
        return None
    return LrSchedule(kind=schedule.kind, warmup_steps=schedule.warmup_steps,
                      total_steps=algorithm.rounds * algorithm.local_steps, min_lr_ratio=schedule.min_lr_ratio)


def schedule_start(algorithm: AlgorithmConfig, round: int) -> float:
    """Where a job for `round` (trained from global `round - 1`) starts on the curve, in federation steps.

    Round r covers [(r−1)·L, r·L), L = `algorithm.local_steps`, whatever the facility's own step count; an
    asynchronous job's `round` is the version after the global it trains from. Derived from the round
    alone, so a resumed server, a late job carried into the next round and a persistent worker agree.
    """
    return float((round - 1) * algorithm.local_steps)


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


class Launches:
    """The jobs of every facility: what the task asks (its recipe, `algorithm`, `exchange`) and where it runs."""

    def __init__(
        self, context: RunContext, facilities: dict[str, Facility], algorithm: AlgorithmConfig,
        exchange: ExchangeConfig,
    ):
        self.context = context
        self.events = context.events
        self.clock = context.clock
        self.progress = context.progress
        self.facilities = facilities
        self.algorithm = algorithm
        self.exchange = exchange
        self._bad_progress: set[str] = set()  # facilities whose progress.json was unreadable (logged once)
        self._ids: dict[str, set[str]] = {}  # attempt ids each facility has used: the ledger's, read once
        # secure aggregation's part of a training task, by round and facility (run/secure_rounds.py); None: off
        self.secure_part: Callable[[int, str], dict[str, Any] | None] | None = None

    # --- launching -------------------------------------------------------------------------------

    def launch(
        self, round: int, facility_name: str, local_steps: int, staged: Path, seed: int, attempt_id: str,
        restore_at: float | None = None,
    ) -> Attempt:
        """Stage global `round - 1` if the facility lacks it, write the task, submit the job.

        `local_steps` is what the policy assigns; a facility whose recipe sets its own `local_steps`
        trains those instead (never under fedcompass, which assigns each job's: the config refuses it).

        With `restore_at` (a resumed server restoring a job it had launched at that time), the job
        is first reattached to (`reattached`), or its published update taken as it is
        (`collected_after_restart`); only a job gone without an update is run again, under a new
        attempt id (`relaunched`). A new job never takes an id the facility has used before.
        """
        facility = self.facilities[facility_name]
        mover = facility.mover
        if "local_steps" in facility.recipe.overridden:
            local_steps = facility.recipe.local_steps
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
        self.context.stop.check()  # no new submission once the server is asked to stop
        attempt = Attempt(facility_name, round, attempt_id, local_steps, seed, None, self.clock.now())
        spec = self._job_spec(attempt)
        self.events.record("launching", round, facility_name, attempt=attempt_id, local_steps=local_steps, seed=seed,
                           started_at=attempt.started_at)  # before the job exists: its id is taken even if we die
        self._used_ids(facility_name).add(attempt_id)
        attempt.handle = facility.launcher.submit(spec)
        self.events.record("submitted", round, facility_name, job_id=attempt.handle.job_id, attempt=attempt_id,
                           local_steps=local_steps, start=attempt.handle.submitted_at)
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
        keep = mode.keeps(kinds) and not self.context.stop.hurried
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
        mover, config, algorithm, recipe = facility.mover, facility.config, self.algorithm, facility.recipe
        task = WorkerTask(
            round=attempt.round,
            facility=attempt.facility,
            global_dir=Path(mover.facility_path(f"global/r{attempt.round - 1:04d}")),
            update_dir=Path(mover.facility_path(attempt.update_rel)),
            progress_file=Path(mover.facility_path(attempt.progress_rel)),
            data=config.data,
            model=recipe.model,
            data_config=recipe.data,
            train=TrainSettings(
                local_steps=attempt.local_steps,
                local_epochs=recipe.local_epochs,
                lr=recipe.lr,
                weight_decay=recipe.weight_decay,
                batch_size=recipe.batch_size,
                grad_accum_steps=recipe.grad_accum_steps,
                max_grad_norm=recipe.max_grad_norm,
                seed=attempt.seed,
                proximal_mu=algorithm.proximal_mu,
                schedule=federation_schedule(algorithm),
                schedule_start=schedule_start(algorithm, attempt.round),
                schedule_span=float(algorithm.local_steps),
            ),
            update_dtype=self.exchange.update_dtype,
            update_form=self.exchange.update_form,
            compression=compression_for(self.exchange.compression, config.compression),
            residual_dir=Path(mover.facility_path(f"error_feedback/{config.name}")),
            shard_bytes=int(self.exchange.shard_size),
            device=config.launcher.device,
            example_privacy=None if recipe.example_privacy is None else ExamplePrivacyJob(
                settings=recipe.example_privacy,  # its ledger stays at the facility: never pulled
                accountant_file=Path(mover.facility_path(f"example_privacy/{config.name}/accountant.json")),
            ),
            secure_aggregation=self.secure_part(attempt.round, attempt.facility) if self.secure_part else None,
        )
        task_dir = self.context.run_dir.log_dir(attempt.round) / f"{attempt.facility}-{attempt.attempt_id}-task"
        shutil.rmtree(task_dir, ignore_errors=True)
        task.write(task_dir / "task.json")
        if not mover.exists(f"tasks/{attempt.attempt_id}/task.json"):
            mover.push(task_dir, f"tasks/{attempt.attempt_id}")
        task_path = mover.facility_path(f"tasks/{attempt.attempt_id}/task.json")
        return JobSpec(
            name=f"{attempt.facility}-{attempt.attempt_id}",
            argv=[sys.executable, "-m", "fedhpc", "worker", "--task", task_path, *mover.worker_args()],
            log_dir=self.context.run_dir.log_dir(attempt.round),
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
            elif self.clock.now() > self.timeout_at(attempt):
                pending.remove(attempt)
                facility.launcher.cancel(attempt.handle)
                self.events.record(
                    "job_finished",
                    attempt.round,
                    attempt.facility,
                    state="timeout",
                    reason=f"algorithm.round_timeout ({self.algorithm.round_timeout:g} s) passed",
                    seconds=self.clock.now() - attempt.handle.submitted_at,
                    start=attempt.handle.submitted_at,
                    attempt=attempt.attempt_id,
                )
            elif status.state is JobState.RUNNING and not attempt.seen_running:
                # the first look at a running job: what it waited in the scheduler's queue, to the poll interval
                self.events.record("job_running", attempt.round, attempt.facility, attempt=attempt.attempt_id,
                                   job_id=attempt.handle.job_id,
                                   queue_seconds=self.clock.now() - attempt.handle.submitted_at)
                attempt.seen_running = True
        return done

    def timeout_at(self, attempt: Attempt) -> float:
        """When a job is cancelled, whatever its round is doing."""
        return attempt.started_at + self.algorithm.round_timeout

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
