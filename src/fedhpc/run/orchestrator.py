"""The server: open (or resume) the run directory, build round 0, then run the rounds.

State that matters lives on disk, not in this object: the ledger says which
rounds are complete and which updates were accepted, the run directory holds
the globals and the aggregator's state (server-optimiser moments), all written
before the ledger marks their round complete. So a server killed at any point
resumes from the last complete round and continues as if never stopped.

Which loop runs the rounds depends on the algorithm: `SyncRounds` (FedAvg and
the server optimisers) or `AsyncRounds` (FedAsync, FedBuff, FedCompass). Both
share the job handling (`jobs.py`) and the chain of globals (`globals.py`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from fedhpc.aggregate import make_aggregator
from fedhpc.config import Experiment
from fedhpc.facility.base import Launcher
from fedhpc.facility.launchers.persistent import PersistentLauncher
from fedhpc.facility.registry import make_launcher, make_mover
from fedhpc.report.metrics_log import MetricsLog
from fedhpc.report.progress import ProgressView
from fedhpc.run.async_rounds import AsyncRounds, make_policy
from fedhpc.run.clock import Clock, RealClock, VirtualClock
from fedhpc.run.events import EventLog
from fedhpc.run.globals import GlobalStore, run_server_command
from fedhpc.run.jobs import Facility, Jobs
from fedhpc.run.ledger import Ledger
from fedhpc.run.rundir import RunDir, check_same_experiment, experiment_document
from fedhpc.run.sync_rounds import SyncRounds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    rounds_completed: list[int]
    final_global: Path
    seconds: float


class Orchestrator:
    def __init__(self, experiment: Experiment, progress: ProgressView, clock: Clock | None = None):
        self.experiment = experiment
        self.progress = progress
        self.clock = clock or RealClock()
        self.run_dir = RunDir(experiment.resolved_run_dir())
        self.ledger: Ledger | None = None
        self.metrics: MetricsLog | None = None

    def run(self, time_limit: float | None = None) -> RunSummary:
        """Run (or resume) to `algorithm.rounds`; with `time_limit` seconds (by the run's clock), stop early."""
        started = self.clock.now()
        launchers = {f.name: make_launcher(f.launcher, self.clock) for f in self.experiment.facilities}  # before
        # anything is written: a launcher this server cannot drive is a configuration error, not a broken run
        resumed_from = self._open_run()
        if resumed_from is not None and isinstance(self.clock, VirtualClock):
            # a simulated run continues from the virtual time of its last complete round
            self.clock.advance_to(self._ledger.completed_at(resumed_from) or 0.0)
            started = self.clock.now()
        events = EventLog(self._ledger, self._metrics, self.clock)
        facilities = self._facilities(launchers, events)
        algorithm = self.experiment.algorithm
        keep_last = self.experiment.checkpoint.keep_last
        if algorithm.is_async:  # a stale update is applied against the global it was trained from
            keep_last = max(keep_last, algorithm.max_staleness + 1)
        aggregator = make_aggregator(algorithm, len(facilities))
        globals_ = GlobalStore(self.experiment, self.run_dir, aggregator, events, self.clock, keep_last)
        events.record(
            "run_started",
            name=self.experiment.name,
            facilities=list(facilities),
            rounds=algorithm.rounds,
            resumed_from=resumed_from,
            algorithm=algorithm.name,
        )
        if resumed_from is None:
            globals_.initialise(self.progress)
        if self.experiment.evaluation is not None and self.experiment.evaluation.include_base:
            self._evaluate(events, 0)
        jobs = Jobs(self.experiment, self.run_dir, facilities, events, self.progress, self.clock,
                    self._ledger.get_meta("base_fingerprint"))
        stop_at = started + time_limit if time_limit is not None else None
        last = self._ledger.last_complete_round() or 0
        try:
            if algorithm.is_async:
                loop = AsyncRounds(self.experiment, jobs, globals_, events, self.progress, self.clock,
                                   make_policy(self.experiment))
                loop.committed_hook = lambda version: self._after_round(events, version)
                loop.run(last, stop_at)
            else:
                rounds = SyncRounds(self.experiment, jobs, globals_, events, self.progress, self.clock)
                try:
                    for round in range(last + 1, algorithm.rounds + 1):
                        rounds.run_round(round)
                        self._after_round(events, round)
                        if stop_at is not None and self.clock.now() >= stop_at:
                            break
                finally:
                    rounds.finish()
        finally:
            _close_launchers(facilities)
            events.record("run_finished", rounds_completed=self._ledger.last_complete_round(),
                          seconds=self.clock.now() - started)
        last = self._ledger.last_complete_round() or 0
        return RunSummary(self._ledger.completed_rounds(), self.run_dir.global_dir(last), self.clock.now() - started)

    def _facilities(self, launchers: dict[str, Launcher], events: EventLog) -> dict[str, Facility]:
        """Each facility's launcher and mover; a `mode: persistent` facility's launcher runs tasks on its worker."""
        facilities = {}
        for f in self.experiment.facilities:
            mover = make_mover(f.mover, self.run_dir.default_staging(f.name))
            launcher = launchers[f.name]
            if f.mode == "persistent":
                launcher = PersistentLauncher(
                    launcher, mover, f.persistent, f.name, self.run_dir.root / "logs" / "workers", self.clock,
                    model=self.experiment.model, device=f.launcher.device, events=events.record,
                )
            facilities[f.name] = Facility(f, launcher, mover)
        return facilities

    def close(self) -> None:
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
        if out.exists():
            return
        self.progress.message(f"evaluating the global of round {round}")
        started = self.clock.now()
        argv = ["eval", "--model", f"{self.run_dir.root}:{round}", "--out", str(out)]
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


def _close_launchers(facilities: dict[str, Facility]) -> None:
    """The run is over: launchers that keep jobs between rounds (persistent workers) stop them."""
    for name, facility in facilities.items():
        close = getattr(facility.launcher, "close", None)
        if close is None:
            continue
        try:
            close()
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


def run_experiment(experiment: Experiment, progress: ProgressView) -> RunSummary:
    orchestrator = Orchestrator(experiment, progress)
    try:
        return orchestrator.run()
    finally:
        orchestrator.close()
