"""The server's event loop: rounds of stage → launch → pull → verify → aggregate → checkpoint.

State that matters lives on disk, not in this object: the ledger says which
rounds are complete and which updates were accepted, the run directory holds
the globals and the aggregator's state (server-optimiser moments), both written
before the ledger marks their round complete. So a server killed at any point
resumes from the last complete round, reusing updates of the interrupted round
that were already accepted, and continues exactly as if never stopped.

One thing lives only in memory: with `algorithm.late_updates: next_round`, a
job still running when its round closed is carried into the next round's list
of attempts. If the server is restarted, a carried-over job is lost (its update
is never pulled) and its facility is launched again as if it had not been late.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedhpc.aggregate import Update, make_aggregator
from fedhpc.config import Experiment, FacilityConfig
from fedhpc.errors import FedhpcError, QuorumNotMet, TransferError, UpdateRejected
from fedhpc.exchange import (
    ExchangeDir,
    ExchangeMeta,
    TrainSettings,
    WorkerTask,
    dtype_from_name,
    write_exchange,
    write_state_dict,
)
from fedhpc.facility.base import JobHandle, JobSpec, JobState, Launcher, Mover
from fedhpc.facility.registry import make_launcher, make_mover
from fedhpc.report.metrics_log import MetricsLog
from fedhpc.report.progress import ProgressView
from fedhpc.run.ledger import Ledger
from fedhpc.run.rundir import RunDir, check_same_experiment, experiment_document
from fedhpc.run.scheduling import SyncPolicy
from fedhpc.run.verification import verify_update

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


@dataclass
class Facility:
    config: FacilityConfig
    launcher: Launcher
    mover: Mover


@dataclass
class Attempt:
    """One facility's job in one round."""

    facility: str
    round: int
    handle: JobHandle
    update_rel: str
    progress_rel: str
    started_at: float
    last_step: int = field(default=-1)


@dataclass(frozen=True)
class RunSummary:
    rounds_completed: list[int]
    final_global: Path
    seconds: float


class Orchestrator:
    def __init__(self, experiment: Experiment, progress: ProgressView):
        self.experiment = experiment
        self.progress = progress
        self.run_dir = RunDir(experiment.resolved_run_dir())
        self.policy = SyncPolicy(experiment.algorithm, [f.name for f in experiment.facilities])
        self.aggregator = make_aggregator(experiment.algorithm)
        self.server_state: dict[str, torch.Tensor] | None = None  # None: read it from the run directory
        self.facilities: dict[str, Facility] = {}
        self.ledger: Ledger | None = None
        self.metrics: MetricsLog | None = None
        self.carried: list[Attempt] = []  # late jobs of closed rounds whose updates count in the next (next_round)

    def run(self) -> RunSummary:
        started = time.time()
        resumed_from = self._open_run()
        for f in self.experiment.facilities:
            mover = make_mover(f.mover, self.run_dir.default_staging(f.name))
            self.facilities[f.name] = Facility(f, make_launcher(f.launcher), mover)
        self._event(
            "run_started",
            name=self.experiment.name,
            facilities=list(self.facilities),
            rounds=self.experiment.algorithm.rounds,
            resumed_from=resumed_from,
        )
        if resumed_from is None:
            self._initialise_global()
        if self.experiment.evaluation is not None and self.experiment.evaluation.include_base:
            self._evaluate(0)
        try:
            for round in range(self._ledger.last_complete_round() + 1, self.experiment.algorithm.rounds + 1):
                self._run_round(round)
                if self._wants_evaluation(round):
                    self._evaluate(round)
        finally:
            for attempt in self.carried:
                self._drop_late(attempt, "the run ended before its update arrived")
            self.carried = []
            self._event("run_finished", rounds_completed=self._ledger.last_complete_round(), seconds=time.time() - started)
        last = self._ledger.last_complete_round()
        return RunSummary(self._ledger.completed_rounds(), self.run_dir.global_dir(last), time.time() - started)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()

    @property
    def _ledger(self) -> Ledger:
        assert self.ledger is not None
        return self.ledger

    # --- run directory ---------------------------------------------------------------------------

    def _open_run(self) -> int | None:
        """Create or reopen the run directory; return the round resumed from, or None for a new run."""
        document = json.dumps(experiment_document(self.experiment), sort_keys=True)
        if self.run_dir.exists():
            self.ledger = Ledger(self.run_dir.ledger_path)
            recorded = self.ledger.get_meta("experiment")
            if recorded is not None:
                check_same_experiment(recorded, self.experiment, self.run_dir.root)
            last = self.ledger.last_complete_round()
            if last is not None:
                removed = self.run_dir.discard_after(last)
                self.ledger.set_meta("experiment", document)
                self.metrics = MetricsLog(self.run_dir.metrics_path)
                self.progress.message(f"resuming {self.run_dir.root} after round {last}")
                if removed:
                    log.info("removed debris of the interrupted round: %s", removed)
                return last
        else:
            self.run_dir.create(self.experiment)
            self.ledger = Ledger(self.run_dir.ledger_path)
        self.ledger.set_meta("experiment", document)
        self.metrics = MetricsLog(self.run_dir.metrics_path)
        return None

    def _initialise_global(self) -> None:
        """Round 0: one worker process writes the seeded initial trainable state as the first global."""
        self.run_dir.discard_after(-1)
        destination = self.run_dir.global_dir(0)
        log_dir = self.run_dir.log_dir(0)
        log_dir.mkdir(parents=True, exist_ok=True)
        task = WorkerTask(
            mode="init",
            round=0,
            facility="server",
            update_dir=destination,
            model=self.experiment.model,
            data_config=self.experiment.data,
            shard_bytes=int(self.experiment.exchange.shard_size),
            device="cpu",
        )
        task_path = log_dir / "init-task.json"
        task.write(task_path)
        self.progress.message("building the initial global model (round 0)")
        started = time.time()
        failure = _run_server_command("init", ["worker", "--task", str(task_path)], log_dir)
        if failure:
            raise FedhpcError(f"building the initial global failed: {failure}")
        manifest = ExchangeDir(destination).manifest
        self._ledger.complete_round(0, str(destination), 0, seconds=time.time() - started)
        self.metrics_emit("aggregated", round=0, num_updates=0, seconds=time.time() - started, start=started, bytes=0)
        self._ledger.set_meta("base_fingerprint", manifest.base_fingerprint)

    # --- one round -------------------------------------------------------------------------------

    def _run_round(self, round: int) -> None:
        round_started = time.time()
        attempts, self.carried = self.carried, []
        busy = {attempt.facility for attempt in attempts}  # a facility is not relaunched until it delivers
        assignments = self.policy.assignments(round)
        participants = [a.facility for a in assignments]
        self._event("round_started", round, participants=participants, carried=sorted(busy))
        for name in self.facilities:
            if name not in participants and name not in busy:
                self.progress.facility_state(name, "idle", round)
        previous = ExchangeDir(self.run_dir.global_dir(round - 1))
        staged = self._stage_copy(round - 1, previous)
        accepted: dict[str, Update] = self._reusable_updates(round, previous)
        for assignment in assignments:
            if assignment.facility in accepted:
                self.progress.facility_state(assignment.facility, "reused", round)
                continue
            if assignment.facility in busy:
                self.progress.facility_state(assignment.facility, "late", round)
                continue
            try:
                attempts.append(self._launch(round, assignment.facility, assignment.local_steps, staged))
            except FedhpcError as e:
                self._event("job_finished", round, assignment.facility, state="failed", reason=str(e), seconds=0.0)
                self.progress.facility_state(assignment.facility, "failed", round)
        self._settle_late(round, self._wait(round, attempts, accepted, previous, round_started))
        if not self.policy.quorum_met(len(accepted)):
            raise QuorumNotMet(
                f"round {round}: {len(accepted)} update(s) accepted, algorithm.min_facilities is "
                f"{self.experiment.algorithm.min_facilities}; see the ledger and {self.run_dir.log_dir(round)}. "
                "Fix the failing facilities and run the same command again to resume."
            )
        self._aggregate(round, previous, list(accepted.values()), round_started)

    def _stage_copy(self, round: int, global_: ExchangeDir) -> Path:
        """The global as facilities receive it: the fp32 master, or a copy cast to the training dtype."""
        wanted = self.experiment.exchange.stage_dtype
        if wanted == "auto":
            wanted = self.experiment.model.dtype
        if wanted == "float32":
            return global_.path
        destination = self.run_dir.stage_dir(round)
        if not destination.exists():
            dtype = dtype_from_name(wanted)
            meta = ExchangeMeta(**global_.manifest.model_dump(include=set(ExchangeMeta.model_fields)))
            write_exchange(
                destination,
                global_.layout(dtype),
                ((name, global_.get(name).to(dtype)) for name in global_.names()),
                meta,
                int(self.experiment.exchange.shard_size),
            )
        return destination

    def _reusable_updates(self, round: int, global_: ExchangeDir) -> dict[str, Update]:
        """Updates of this round already accepted before a crash still count: no facility redoes work.

        A stale update (a late job of an earlier round, accepted into this one) is reused too.
        """
        reusable = {}
        for event in self._ledger.events("accepted", round=round):
            path = self.run_dir.update_dir(round, event.facility or "")
            trained_round = round - int(event.detail.get("staleness", 0))
            try:
                reusable[event.facility] = self._verified(path, event.facility, trained_round, global_)
            except UpdateRejected:
                continue
            self._event("reused", round, event.facility)
        return reusable

    def _launch(self, round: int, facility_name: str, local_steps: int, staged: Path) -> Attempt:
        facility = self.facilities[facility_name]
        mover, config = facility.mover, facility.config
        global_rel = f"global/r{round - 1:04d}"
        started = time.time()
        if not mover.exists(global_rel):
            moved = mover.push(staged, global_rel)
            self._event("staged", round, facility_name, bytes=moved, seconds=time.time() - started, start=started)
        attempt_id = f"r{round:04d}-{uuid.uuid4().hex[:8]}"
        task = WorkerTask(
            round=round,
            facility=facility_name,
            global_dir=Path(mover.facility_path(global_rel)),
            update_dir=Path(mover.facility_path(f"updates/{attempt_id}")),
            progress_file=Path(mover.facility_path(f"progress/{attempt_id}.json")),
            data=config.data,
            model=self.experiment.model,
            data_config=self.experiment.data,
            train=TrainSettings(
                local_steps=local_steps,
                lr=self.experiment.algorithm.lr,
                weight_decay=self.experiment.algorithm.weight_decay,
                batch_size=self.experiment.algorithm.batch_size,
                seed=self.experiment.algorithm.seed,
                proximal_mu=self.experiment.algorithm.proximal_mu,
            ),
            update_dtype=self.experiment.exchange.update_dtype,
            shard_bytes=int(self.experiment.exchange.shard_size),
            device=config.launcher.device,
        )
        task_dir = self.run_dir.log_dir(round) / f"{facility_name}-task"
        shutil.rmtree(task_dir, ignore_errors=True)
        task.write(task_dir / "task.json")
        mover.push(task_dir, f"tasks/{attempt_id}")
        spec = JobSpec(
            name=f"{facility_name}-{attempt_id}",
            argv=[sys.executable, "-m", "fedhpc", "worker", "--task", mover.facility_path(f"tasks/{attempt_id}/task.json")],
            log_dir=self.run_dir.log_dir(round),
            walltime_s=self.experiment.algorithm.round_timeout,
        )
        handle = facility.launcher.submit(spec)
        self._event("submitted", round, facility_name, job_id=handle.job_id, start=handle.submitted_at)
        self.progress.facility_state(facility_name, "submitted", round)
        return Attempt(facility_name, round, handle, f"updates/{attempt_id}", f"progress/{attempt_id}.json", time.time())

    def _wait(
        self, round: int, attempts: list[Attempt], accepted: dict[str, Update], global_: ExchangeDir,
        round_started: float,
    ) -> list[Attempt]:
        """Add the updates of finished jobs to `accepted` until the round may close; return the jobs still running.

        Without a round deadline that is when every job has ended (or been cancelled at its timeout).
        """
        pending = list(attempts)
        while pending:
            for attempt in self._poll(pending):
                update = self._collect(attempt, round, global_)
                if update is not None:
                    accepted[attempt.facility] = update
            if not pending or self.policy.may_close(round_started, len(accepted), time.time()):
                break
            time.sleep(POLL_SECONDS)
        return pending

    def _poll(self, pending: list[Attempt]) -> list[Attempt]:
        """Look at every pending job once; remove those that ended or timed out; return those that ended DONE."""
        done = []
        for attempt in list(pending):
            facility = self.facilities[attempt.facility]
            status = facility.launcher.poll(attempt.handle)
            self._show_progress(attempt)
            if status.state.finished:
                pending.remove(attempt)
                self._event(
                    "job_finished",
                    attempt.round,
                    attempt.facility,
                    state=status.state.value,
                    returncode=status.returncode,
                    reason=status.reason[-2000:],
                    seconds=time.time() - attempt.handle.submitted_at,
                    start=attempt.handle.submitted_at,
                )
                if status.state is JobState.DONE:
                    done.append(attempt)
                else:
                    self.progress.facility_state(attempt.facility, status.state.value, attempt.round)
            elif time.time() > self.policy.timeout_at(attempt.started_at):
                pending.remove(attempt)
                facility.launcher.cancel(attempt.handle)
                self._event(
                    "job_finished",
                    attempt.round,
                    attempt.facility,
                    state="timeout",
                    reason=f"algorithm.round_timeout ({self.experiment.algorithm.round_timeout:g} s) passed",
                    seconds=time.time() - attempt.handle.submitted_at,
                    start=attempt.handle.submitted_at,
                )
                self.progress.facility_state(attempt.facility, "timeout", attempt.round)
            elif status.state is JobState.RUNNING and attempt.last_step < 0:
                self.progress.facility_state(attempt.facility, "running", attempt.round)
                attempt.last_step = 0
        return done

    def _settle_late(self, round: int, late: list[Attempt]) -> None:
        """Jobs still running when `round` closed: carry them into the next round, or cancel them."""
        for attempt in late:
            if self.policy.late_updates == "next_round" and round < self.experiment.algorithm.rounds:
                self.carried.append(attempt)
                self._event("late_carried", round, attempt.facility, job_id=attempt.handle.job_id,
                            trained_round=attempt.round)
                self.progress.facility_state(attempt.facility, "late", round)
            elif self.policy.late_updates == "next_round":
                self._drop_late(attempt, "the run's last round closed without it")
            else:
                deadline = self.experiment.algorithm.round_deadline or 0.0
                self._drop_late(attempt, f"algorithm.round_deadline ({deadline:g} s) passed and the round closed without it")

    def _drop_late(self, attempt: Attempt, reason: str) -> None:
        """Cancel a job whose round closed without it; recorded as `late_dropped` under the job's round."""
        self.facilities[attempt.facility].launcher.cancel(attempt.handle)
        self._event(
            "late_dropped",
            attempt.round,
            attempt.facility,
            job_id=attempt.handle.job_id,
            reason=reason,
            seconds=time.time() - attempt.handle.submitted_at,
            start=attempt.handle.submitted_at,
        )
        self.progress.facility_state(attempt.facility, "late, dropped", attempt.round)

    def _show_progress(self, attempt: Attempt) -> None:
        raw = self.facilities[attempt.facility].mover.peek(attempt.progress_rel)
        if raw is None:
            return
        try:
            progress = json.loads(raw)
        except ValueError:
            return
        if progress.get("step", -1) > attempt.last_step:
            attempt.last_step = progress["step"]
            self.progress.facility_progress(
                attempt.facility, progress["step"], progress.get("local_steps", 0), progress.get("loss")
            )

    def _collect(self, attempt: Attempt, round: int, global_: ExchangeDir) -> Update | None:
        """Pull and verify one finished job's update for `round`; a bad one is recorded, not raised.

        The job may have been launched in an earlier round (a late job carried over): its update
        then counts in `round` as a stale one, `staleness` rounds behind the global it joins.
        """
        destination = self.run_dir.update_dir(round, attempt.facility)
        shutil.rmtree(destination, ignore_errors=True)
        started = time.time()
        try:
            moved = self.facilities[attempt.facility].mover.pull(attempt.update_rel, destination)
            self._event("pulled", round, attempt.facility, bytes=moved, seconds=time.time() - started, start=started)
            update = self._verified(destination, attempt.facility, attempt.round, global_)
        except (UpdateRejected, TransferError) as e:
            reason = e.reason if isinstance(e, UpdateRejected) else "transfer"
            self._event("rejected", round, attempt.facility, reason=reason, message=str(e))
            self.progress.facility_state(attempt.facility, f"rejected ({reason})", round)
            return None
        metrics = ExchangeDir(destination).manifest.metrics
        self._event(
            "accepted",
            round,
            attempt.facility,
            num_samples=update.num_samples,
            local_steps=update.local_steps,
            loss=metrics.get("loss", []),
            tokens=metrics.get("tokens"),
            train_seconds=metrics.get("train_seconds"),
            load_seconds=metrics.get("load_seconds"),
            staleness=round - 1 - update.based_on_round,
        )
        self.progress.facility_state(attempt.facility, "accepted", round)
        return update

    def _verified(self, path: Path, facility: str | None, trained_round: int, global_: ExchangeDir) -> Update:
        """Verify an update trained for `trained_round` against `global_` (the global it will be aggregated into)."""
        update_dir = ExchangeDir(path)
        verify_update(
            update_dir,
            global_,
            expected_round=trained_round,
            fingerprint=self._ledger.get_meta("base_fingerprint"),
            max_norm=self.experiment.algorithm.max_update_norm,
        )
        manifest = update_dir.manifest
        return Update(
            facility=facility or manifest.facility or "",
            source=update_dir,
            num_samples=manifest.num_samples,
            local_steps=manifest.local_steps,
            based_on_round=manifest.based_on_round if manifest.based_on_round is not None else trained_round - 1,
        )

    def _aggregate(self, round: int, global_: ExchangeDir, updates: list[Update], round_started: float) -> None:
        started = time.time()
        destination = self.run_dir.global_dir(round)
        meta = ExchangeMeta(kind="global", round=round, base_fingerprint=global_.manifest.base_fingerprint)
        state = self.server_state if self.server_state is not None else self._load_server_state(round - 1)
        self.server_state = None  # the aggregator updates it in place: until saved, only the disk copy is whole
        manifest = write_exchange(
            destination,
            global_.layout(torch.float32),
            self.aggregator.aggregate(global_, sorted(updates, key=lambda u: u.facility), state),
            meta,
            int(self.experiment.exchange.shard_size),
        )
        self._save_server_state(round, state, meta.base_fingerprint)
        self.server_state = state
        losses = [loss for u in updates if (loss := self._mean_loss(round, u.facility)) is not None]
        detail = dict(
            algorithm=self.experiment.algorithm.name,
            seconds=time.time() - started,
            start=started,
            bytes=sum(f.bytes for f in manifest.files.values()),
            facilities=sorted(u.facility for u in updates),
        )
        self._ledger.complete_round(round, str(destination), len(updates), **detail)
        self.metrics_emit("aggregated", round=round, num_updates=len(updates), **detail)
        mean_loss = sum(losses) / len(losses) if losses else None
        self._event("round_complete", round, seconds=time.time() - round_started, mean_loss=mean_loss, start=round_started)
        self.progress.round_done(round, time.time() - round_started, mean_loss)
        self.run_dir.prune(round, self.experiment.checkpoint.keep_last)

    def _save_server_state(self, round: int, state: dict[str, torch.Tensor], fingerprint: str) -> None:
        """Publish the aggregator's state after `round` (empty for fedavg) as an exchange directory.

        It is a `global`-kind directory marked `content: server_state` in its manifest metrics.
        """
        meta = ExchangeMeta(
            kind="global",
            round=round,
            base_fingerprint=fingerprint,
            metrics={"content": "server_state", "algorithm": self.experiment.algorithm.name},
        )
        write_state_dict(self.run_dir.server_state_dir(round), state, meta, int(self.experiment.exchange.shard_size))

    def _load_server_state(self, round: int) -> dict[str, torch.Tensor]:
        """The aggregator's state saved after `round`, verified like an update; round 0 has none."""
        if round == 0:
            return {}
        path = self.run_dir.server_state_dir(round)
        try:
            saved = ExchangeDir(path)
            saved.verify()
            state = {name: saved.get(name) for name in saved.names()}
        except UpdateRejected as e:
            raise FedhpcError(
                f"cannot resume after round {round}: its server state is unusable ({e}). "
                "Start a new run (new run_dir), or restore that directory from a backup."
            ) from e
        saved.close()
        return state

    def _mean_loss(self, round: int, facility: str) -> float | None:
        """The facility's mean training loss over its local steps this round, from the ledger."""
        for event in reversed(self._ledger.events("accepted", round=round)):
            if event.facility == facility and event.detail.get("loss"):
                return sum(event.detail["loss"]) / len(event.detail["loss"])
        return None

    # --- evaluation ------------------------------------------------------------------------------

    def _wants_evaluation(self, round: int) -> bool:
        evaluation = self.experiment.evaluation
        if evaluation is None:
            return False
        return round == self.experiment.algorithm.rounds or (evaluation.every > 0 and round % evaluation.every == 0)

    def _evaluate(self, round: int) -> None:
        """Score global `round` with a `fedhpc eval` process; a failure is recorded, not fatal."""
        out = self.run_dir.eval_path(round)
        if out.exists():
            return
        self.progress.message(f"evaluating the global of round {round}")
        started = time.time()
        argv = ["eval", "--model", f"{self.run_dir.root}:{round}", "--out", str(out)]
        failure = _run_server_command(f"eval-r{round:04d}", argv, self.run_dir.log_dir(round))
        if failure:
            self._event("eval_failed", round, reason=failure)
            self.progress.message(f"evaluation of round {round} failed: {failure.splitlines()[0]}")
            return
        result = json.loads(out.read_text())
        self._event("eval", round, scores=result["scores"], examples=result["examples"],
                    seconds=time.time() - started, start=started)
        self.progress.message(f"round {round} scores: {_brief_scores(result['scores'])}")

    # --- events ----------------------------------------------------------------------------------

    def _event(self, event: str, round: int | None = None, facility: str | None = None, **fields) -> None:
        self._ledger.record(event, round, facility, **fields)
        self.metrics_emit(event, round=round, facility=facility, **fields)

    def metrics_emit(self, event: str, **fields) -> None:
        assert self.metrics is not None
        self.metrics.emit(event, **{k: v for k, v in fields.items() if v is not None})


def _run_server_command(name: str, argv: list[str], log_dir: Path) -> str:
    """Run `python -m fedhpc ARGV` on the server, logs under `log_dir`; return "" or why it failed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.out", "wb") as out, open(log_dir / f"{name}.err", "wb") as err:
        result = subprocess.run([sys.executable, "-m", "fedhpc", *argv], stdout=out, stderr=err)
    if result.returncode == 0:
        return ""
    tail = (log_dir / f"{name}.err").read_text(errors="replace").splitlines()[-15:]
    return f"exit {result.returncode}; see {log_dir / (name + '.err')}:\n" + "\n".join(tail)


def _brief_scores(scores: dict[str, dict[str, float]]) -> str:
    headline = ("exact_match", "accuracy", "rmse")
    parts = []
    for task, metrics in scores.items():
        key = next((k for k in headline if k in metrics), None)
        if key is not None and metrics[key] is not None:
            parts.append(f"{task} {key}={metrics[key]:.3g}")
    return ", ".join(parts)


def run_experiment(experiment: Experiment, progress: ProgressView) -> RunSummary:
    orchestrator = Orchestrator(experiment, progress)
    try:
        return orchestrator.run()
    finally:
        orchestrator.close()
