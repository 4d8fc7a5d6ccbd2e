"""The server: open (or resume) the run directory, build round 0, then run the rounds.

State that matters lives on disk, not in this object: the ledger says which
rounds are complete and which updates were accepted, the run directory holds
the globals and the aggregator's state (server-optimiser moments), all written
before the ledger marks their round complete. So a server killed at any point
resumes from the last complete round and continues as if never stopped.

Which loop runs the rounds depends on the algorithm: `SyncRounds` (FedAvg and
the server optimisers) or `AsyncRounds` (FedAsync, FedBuff, FedCompass). Both
share the jobs (`launches.py`), the gate updates pass (`intake.py`) and the chain of globals
(`global_chain.py`), and each gets only its own sub-config: this is the one place that holds the `Experiment`.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedhpc.aggregate import make_aggregator
from fedhpc.config import Experiment
from fedhpc.errors import FedhpcError, RunInterrupted
from fedhpc.facility.base import Launcher
from fedhpc.facility.registry import facility_launcher, make_launcher, make_mover
from fedhpc.report.metrics_log import MetricsLog
from fedhpc.report.progress import ProgressView
from fedhpc.run.async_rounds import AsyncRounds, make_policy
from fedhpc.run.best_round import record_best
from fedhpc.clock import Clock, RealClock, VirtualClock
from fedhpc.run.events import EventLog
from fedhpc.run.context import RunContext
from fedhpc.run.global_chain import GlobalChain
from fedhpc.run.intake import Intake
from fedhpc.run.interrupts import OnInterrupt, StopFlag
from fedhpc.run.launches import Facility, Launches
from fedhpc.run.ledger import Ledger
from fedhpc.run.rundir import RunDir, check_same_experiment, experiment_document
from fedhpc.run.server_command import run_server_command
from fedhpc.run.status import failure_lines
from fedhpc.run.scheduling import PoissonSyncPolicy, SyncPolicy, sampling_key
from fedhpc.run.sync_rounds import SyncRounds
from fedhpc.tracking import TrackingSession, start_tracking

if TYPE_CHECKING:
    from fedhpc.run.privacy_budget import PrivacyBudget

log = logging.getLogger(__name__)
SAMPLING_KEY = "privacy_sampling_key"  # ledger meta: the secret the Poisson sample of a private run is drawn from


@dataclass(frozen=True)
class RunSummary:
    rounds_completed: list[int]
    final_global: Path
    seconds: float
    complete: bool = True  # False: stopped at its time limit with rounds left
    failures: list[str] = field(default_factory=list)  # one line per failed job or rejected update of this server


class Orchestrator:
    def __init__(
        self, experiment: Experiment, progress: ProgressView, clock: Clock | None = None,
        launchers: Mapping[str, Launcher] | None = None,
    ):
        """`launchers`: one per facility, built by the caller (`fedhpc simulate` builds simulated ones on its
        virtual clock); by default the registry builds each from the facility's launcher config."""
        self.experiment = experiment
        self.launchers = dict(launchers) if launchers is not None else None
        self.progress = progress
        self.clock = clock or RealClock()
        self.run_dir = RunDir(experiment.resolved_run_dir())
        self.ledger: Ledger | None = None
        self.metrics: MetricsLog | None = None
        self.tracking: TrackingSession | None = None

    def run(
        self, time_limit: float | None = None, on_interrupt: OnInterrupt = OnInterrupt.AUTO,
        stop: StopFlag | None = None, outlive_server: bool = False,
    ) -> RunSummary:
        """Run (or resume) to `algorithm.rounds`; with `time_limit` seconds (by the run's clock), stop early.

        `stop` is set by the signal handlers (`StopFlag.installed`): the run then stops at the next
        safe point, settles its jobs in flight by `on_interrupt`, records `run_interrupted` and raises
        `RunInterrupted` with the line the console shows. Only a run that completed every round
        records `run_finished`; one that stopped on an error records `run_stopped` with the reason.
        `outlive_server`: local jobs are started so that they survive the server (`--on-interrupt keep`).
        """
        stop = stop or StopFlag()
        started = self.clock.now()
        launchers = self.launchers or {
            f.name: make_launcher(f.launcher, outlive_server=outlive_server)
            for f in self.experiment.facilities
        }  # before anything is written: a launcher this server cannot drive is a configuration error, not a broken run
        resumed_from = self._open_run()
        if resumed_from is not None and isinstance(self.clock, VirtualClock):
            # a simulated run continues from the virtual time of its last complete round
            self.clock.advance_to(self._ledger.completed_at(resumed_from) or 0.0)
            started = self.clock.now()
        events = EventLog(self._ledger, self._metrics, self.clock)
        if resumed_from is not None:
            events.catch_up()  # what a killed server committed but never wrote to metrics.jsonl
            _close_committed_round(events, resumed_from)
        events.subscribe(self.progress.on_event)  # from here on: what a killed server did is not shown again
        self.tracking = start_tracking(self.experiment.tracking, events, experiment_document(self.experiment),
                                       self.run_dir.root, self.experiment.name)  # it logs what it lacks itself
        facilities = self._facilities(launchers, events)
        algorithm = self.experiment.algorithm
        keep_last = self.experiment.checkpoint.keep_last
        if algorithm.is_async:  # a stale update is applied against the global it was trained from
            keep_last = max(keep_last, algorithm.max_staleness + 1)
        aggregator = make_aggregator(algorithm, len(facilities))
        privacy = self._privacy_budget(len(facilities))
        if privacy is not None:
            aggregator = privacy.wrap(aggregator)
        context = RunContext(self.run_dir, events, self.clock, self.progress, stop)
        experiment = self.experiment
        chain = GlobalChain(context, aggregator, algorithm, experiment.model, experiment.data, experiment.exchange,
                            keep_last, privacy)
        events.record(
            "run_started",
            name=self.experiment.name,
            facilities=list(facilities),
            rounds=algorithm.rounds,
            resumed_from=resumed_from,
            algorithm=algorithm.name,
        )
        loop: SyncRounds | AsyncRounds | None = None
        launches: Launches | None = None
        try:
            if resumed_from is None:
                chain.initialise()
            stop.check()
            if self.experiment.evaluation is not None and self.experiment.evaluation.include_base:
                self._evaluate(events, 0)
            launches = Launches(context, facilities, algorithm, experiment.exchange)
            intake = Intake(context, facilities, self._ledger.get_meta("base_fingerprint"), algorithm.max_update_norm)
            secure = None
            if experiment.secure_aggregation is not None:  # imported only then: it loads cryptography
                from fedhpc.run.secure_rounds import SecureIntake, SecureRounds

                secure = SecureRounds(experiment.secure_aggregation, launches)
                launches.secure_part = secure.task_part
                intake = SecureIntake(context, facilities, self._ledger.get_meta("base_fingerprint"), secure)
            stop_at = started + time_limit if time_limit is not None else None
            last = self._ledger.last_complete_round() or 0
            if algorithm.is_async:
                loop = AsyncRounds(context, algorithm, launches, intake, chain, make_policy(algorithm))
                loop.committed_hook = lambda version: self._after_round(events, version)
                loop.run(last, stop_at)
            else:
                policy = self._sync_policy(list(facilities))
                loop = SyncRounds(context, algorithm, launches, intake, chain, policy, secure)
                for round in range(last + 1, algorithm.rounds + 1):
                    stop.check()
                    if privacy is not None:  # before its jobs are launched: no allocation is spent on it
                        privacy.check_before(round)
                    loop.run_round(round)
                    self._after_round(events, round)
                    if stop_at is not None and self.clock.now() >= stop_at:
                        break
                loop.finish()
        except RunInterrupted as e:
            with stop.shielded():
                raise self._interrupted(e, events, launches, loop, on_interrupt) from e
        except FedhpcError as e:
            if isinstance(loop, SyncRounds):
                loop.finish()
            events.record("run_stopped", rounds_completed=self._ledger.last_complete_round(), error=type(e).__name__,
                          reason=str(e)[-2000:], seconds=self.clock.now() - started)
            raise
        finally:
            _close_launchers(facilities)
        last = self._ledger.last_complete_round() or 0
        complete = last >= algorithm.rounds
        if complete:
            events.record("run_finished", rounds_completed=last, seconds=self.clock.now() - started)
        else:
            events.record("run_stopped", rounds_completed=last, error="BudgetReached",
                          reason=f"the time limit passed after round {last} of {algorithm.rounds}",
                          seconds=self.clock.now() - started)
        return RunSummary(self._ledger.completed_rounds(), self.run_dir.global_dir(last), self.clock.now() - started,
                          complete, failure_lines(self._ledger, self.run_dir, this_server=True))

    def _sync_policy(self, facilities: list[str]) -> SyncPolicy:
        """Who takes part in each round: with privacy on, a Poisson sample drawn from the run's secret key."""
        privacy, algorithm = self.experiment.privacy, self.experiment.algorithm
        if privacy is None:
            return SyncPolicy(algorithm, facilities)
        key = sampling_key(self._ledger.get_meta(SAMPLING_KEY), privacy.noise_seed)
        self._ledger.set_meta(SAMPLING_KEY, key.hex())
        return PoissonSyncPolicy(algorithm, facilities, key)

    def _privacy_budget(self, num_facilities: int) -> PrivacyBudget | None:
        """The run's privacy budget when `privacy:` is on (imported only then: dp-accounting loads scipy)."""
        if self.experiment.privacy is None:
            return None
        from fedhpc.run.privacy_budget import PrivacyBudget

        return PrivacyBudget(self.experiment.privacy, self.experiment.algorithm, num_facilities)

    def _interrupted(
        self, error: RunInterrupted, events: EventLog, launches: Launches | None,
        loop: SyncRounds | AsyncRounds | None, on_interrupt: OnInterrupt,
    ) -> RunInterrupted:
        """Keep or cancel the jobs in flight, record `run_interrupted`; the error carries the console's line."""
        in_flight = loop.in_flight() if loop is not None else []
        kept, cancelled = launches.settle_interrupted(in_flight, on_interrupt) if launches is not None else ([], [])
        last = self._ledger.last_complete_round() or 0
        name = signal.Signals(error.signum).name
        events.record("run_interrupted", rounds_completed=last, signal=name, on_interrupt=on_interrupt.value,
                      kept=[a.attempt_id for a in kept], cancelled=[a.attempt_id for a in cancelled])
        settled = []
        if kept:
            settled.append(f"{_jobs(len(kept))} left running (they will be collected on resume)")
        if cancelled:
            settled.append(f"{_jobs(len(cancelled))} cancelled")
        what = "; ".join(settled) or "no job was running"
        return RunInterrupted(
            error.signum,
            f"interrupted ({name}) after round {last} of {self.experiment.algorithm.rounds}; {what}; "
            "run the same command again to resume",
        )

    def _facilities(self, launchers: dict[str, Launcher], events: EventLog) -> dict[str, Facility]:
        """Each facility's launcher and mover; a `mode: persistent` facility's launcher runs tasks on its worker."""
        facilities = {}
        for f in self.experiment.facilities:
            mover = make_mover(f.mover, self.run_dir.default_staging(f.name))
            recipe = self.experiment.recipe_for(f)  # its model: the one each of its tasks names
            launcher = facility_launcher(f, launchers[f.name], mover, self.run_dir.root / "logs" / "workers",
                                         self.clock, recipe.model, events.record)
            facilities[f.name] = Facility(f, launcher, mover, recipe)
        return facilities

    def close(self) -> None:
        if self.tracking is not None:  # first: it reads the ledger, and logs the report
            self.tracking.close()
        if self.ledger is not None:
            self.ledger.close()
        if self.metrics is not None:
            self.metrics.close()

    @property
    def _ledger(self) -> Ledger:
        assert self.ledger is not None
        return self.ledger

    @property
    def _metrics(self) -> MetricsLog:
        assert self.metrics is not None
        return self.metrics

    # --- run directory ---------------------------------------------------------------------------

    def _open_run(self) -> int | None:
        """Create or reopen the run directory; return the round resumed from, or None for a new run."""
        document = json.dumps(experiment_document(self.experiment), sort_keys=True)
        if self.run_dir.exists():
            self.ledger = Ledger(self.run_dir.ledger_path, now=self.clock.now)
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
            self.ledger = Ledger(self.run_dir.ledger_path, now=self.clock.now)
        self.ledger.set_meta("experiment", document)
        self.metrics = MetricsLog(self.run_dir.metrics_path)
        return None

    # --- evaluation ------------------------------------------------------------------------------

    def _after_round(self, events: EventLog, round: int) -> None:
        evaluation = self.experiment.evaluation
        if evaluation is None:
            return
        if round == self.experiment.algorithm.rounds or (evaluation.every > 0 and round % evaluation.every == 0):
            self._evaluate(events, round)

    def _evaluate(self, events: EventLog, round: int) -> None:
        """Score global `round` with a `fedhpc eval` process; a failure is recorded, not fatal."""
        out = self.run_dir.eval_path(round)
        if out.exists():  # scored before a kill: it may not have been ranked yet
            self._rank(events, round, json.loads(out.read_text()))
            return
        started = self.clock.now()
        argv = ["eval", "--model", f"{self.run_dir.root}:{round}", "--out", str(out)]
        with self.progress.phase(f"evaluating the global of round {round}"):
            failure = run_server_command(f"eval-r{round:04d}", argv, self.run_dir.log_dir(round))
        if failure:
            events.record("eval_failed", round, reason=failure)
            self.progress.message(f"evaluation of round {round} failed: {failure.splitlines()[0]}")
            return
        result = json.loads(out.read_text())
        events.record("eval", round, tasks=result["tasks"], lenient=result["lenient"], examples=result["examples"],
                      seconds=self.clock.now() - started, start=started)
        label = " (LENIENT extraction, not LlaSMol's)" if result["lenient"] else ""
        self.progress.message(f"round {round} scores{label}: {_brief_scores(result['tasks'])}")
        self._rank(events, round, result)

    def _rank(self, events: EventLog, round: int, result: dict) -> None:
        """Record `round` as the best so far if its `evaluation.key_metric` beats the ledger's best."""
        evaluation = self.experiment.evaluation
        if evaluation is not None and evaluation.key_metric is not None and evaluation.mode is not None:
            line = record_best(events, round, result, evaluation.key_metric, evaluation.mode)
            if line is not None:
                self.progress.message(line)


def _jobs(n: int) -> str:
    return f"{n} job{'s' if n != 1 else ''}"


def _close_committed_round(events: EventLog, round: int) -> None:
    """A server killed between committing `round` and recording it complete: record `round_complete` now.

    Its mean loss comes from the ledger's `accepted` events of the updates the round aggregated.
    """
    ledger = events.ledger
    if round == 0 or ledger.events("round_complete", round=round):
        return
    detail = ledger.round_detail(round) or {}
    attempts = detail.get("attempts")
    facilities = detail.get("facilities")
    losses = []
    for event in ledger.events("accepted", round=round):
        if attempts is not None and event.detail.get("attempt") not in attempts:
            continue
        if attempts is None and facilities is not None and event.facility not in facilities:
            continue
        loss = event.detail.get("loss") or []
        if loss:
            losses.append(sum(loss) / len(loss))
    started = ledger.events("round_started", round=round)
    completed_at = ledger.completed_at(round) or 0.0
    start = started[-1].ts if started else completed_at
    events.record("round_complete", round, seconds=completed_at - start, start=start,
                  mean_loss=sum(losses) / len(losses) if losses else None, recovered=True)


def _close_launchers(facilities: dict[str, Facility]) -> None:
    """The run is over: launchers that keep jobs between rounds (persistent workers) stop them."""
    for name, facility in facilities.items():
        try:
            facility.launcher.close()
        except Exception:  # noqa: BLE001 - one facility's cleanup must not hide the run's outcome or skip the others
            log.exception("could not stop the jobs of facility %s", name)


def _brief_scores(tasks: dict[str, dict]) -> str:
    """Each task's primary metric, and whether it beats its baseline, on one line."""
    parts = []
    for task, entry in tasks.items():
        value = entry["metrics"].get(entry["primary"], {}).get("value")
        shown = "n/a" if value is None else f"{value:.3g}"
        verdict = "beats baseline" if entry["beats_baseline"] else "not above baseline"
        parts.append(f"{task} {entry['primary']}={shown} ({verdict})")
    return ", ".join(parts)


def run_experiment(
    experiment: Experiment, progress: ProgressView, on_interrupt: OnInterrupt = OnInterrupt.AUTO,
    stop: StopFlag | None = None, time_limit: float | None = None,
) -> RunSummary:
    """`fedhpc run`: `keep` (and only keep) starts local jobs so that they outlive the server."""
    orchestrator = Orchestrator(experiment, progress)
    try:
        return orchestrator.run(time_limit=time_limit, on_interrupt=on_interrupt, stop=stop,
                                outlive_server=on_interrupt is OnInterrupt.KEEP)
    finally:
        orchestrator.close()
