"""Asynchronous runs (FedAsync, FedBuff, FedCompass): facilities train continuously, globals advance on arrival.

A "round" here is a global version: each aggregation publishes the next one.
A job is trained from the newest global when it is launched; when its update
arrives `staleness` versions later it is applied with a staleness weight, or
rejected (reason `stale`) beyond `algorithm.max_staleness`: the server keeps
only the last max_staleness + 1 globals, so an older one may be gone.

What a resume needs is committed with every global, in the same ledger
transaction (meta key `async_state`): the policy's state, the jobs in flight
(including those about to be launched), the accepted updates still waiting in
a buffer, the job counter and the clock. A resumed server reattaches to those
jobs (or re-runs them: a job is a pure function of its task, and its seed and
attempt id come from the job counter), so it makes the same decisions as a
server that was never stopped; under the virtual clock, bit for bit.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedhpc.aggregate import Update
from fedhpc.config import AlgorithmConfig
from fedhpc.errors import FedhpcError, QuorumNotMet, RunInterrupted, UpdateRejected
from fedhpc.exchange import ExchangeDir
from fedhpc.run.async_policies import AsyncPolicy, Decision, Dispatch, FedAsyncPolicy, FedBuffPolicy
from fedhpc.run.compass import CompassPolicy
from fedhpc.run.context import RunContext
from fedhpc.run.global_chain import GlobalChain
from fedhpc.run.intake import Intake
from fedhpc.run.launches import Attempt, Launches, attempt_from_record

log = logging.getLogger(__name__)
STATE_KEY = "async_state"
MAX_CONSECUTIVE_LOSSES = 3  # a facility whose jobs keep failing is retired instead of relaunched forever


def make_policy(algorithm: AlgorithmConfig) -> AsyncPolicy:
    if algorithm.name == "fedasync":
        return FedAsyncPolicy(algorithm.local_steps)
    if algorithm.name == "fedbuff":
        return FedBuffPolicy(algorithm.local_steps, algorithm.fedbuff_k())
    min_steps, max_steps = algorithm.compass_steps()
    compass = algorithm.compass
    return CompassPolicy(min_steps, max_steps, compass.latest_time_factor, compass.speed_momentum)


@dataclass
class Buffered:
    attempt: Attempt
    update: Update


class AsyncRounds:
    def __init__(
        self, context: RunContext, algorithm: AlgorithmConfig, launches: Launches, intake: Intake, chain: GlobalChain,
        policy: AsyncPolicy,
    ):
        self.context = context
        self.events = context.events
        self.clock = context.clock
        self.progress = context.progress
        self.algorithm = algorithm
        self.launches = launches
        self.intake = intake
        self.chain = chain
        self.policy = policy
        self.version = 0
        self.serial = 0
        self.pending: list[Attempt] = []
        self.arriving: list[Attempt] = []  # ended in the last poll, not yet handled: still in flight for a resume
        self.last_commit_at = context.clock.now()
        self.buffer: dict[str, Buffered] = {}
        self.losses: dict[str, int] = {}
        self.retired: set[str] = set()
        self.committed_hook: Callable[[int], None] | None = None  # called with each version published (evaluation)

    def run(self, last_complete: int, stop_at: float | None = None) -> None:
        """Publish globals until version `algorithm.rounds` (or the clock passes `stop_at`)."""
        self.version = last_complete
        saved = self.events.ledger.get_meta(STATE_KEY)
        if last_complete > 0 and saved is not None:
            self._restore(json.loads(saved))
        else:
            self._launch_all(self.policy.start(list(self.launches.facilities), self.clock.now()))
        interrupted = False
        try:
            while self.version < self.algorithm.rounds:
                self.context.stop.check()
                if stop_at is not None and self.clock.now() >= stop_at:
                    self.progress.message(f"stopping at the time limit after version {self.version}")
                    break
                before = list(self.pending)
                done = self.launches.poll(self.pending)
                self.arriving = [attempt for attempt in before if attempt not in self.pending]
                while self.arriving:
                    attempt = self.arriving.pop(0)
                    if attempt in done:
                        self._arrived(attempt)
                    else:
                        self._lost(attempt)
                for decision in self.policy.tick(self.clock.now()):
                    self._apply(decision)
                if not self.pending:
                    raise QuorumNotMet(
                        f"no facility is training any more after version {self.version}: "
                        f"{', '.join(sorted(self.retired))} failed {MAX_CONSECUTIVE_LOSSES} jobs in a row; "
                        "see the ledger's job_finished and rejected events. Fix them and run the same command "
                        "again to resume."
                    )
                if self.version < self.algorithm.rounds:
                    self.clock.sleep_until(self._next_wake())
        except RunInterrupted:
            interrupted = True  # the jobs in flight are the orchestrator's to keep or cancel (`in_flight`)
            raise
        finally:
            if not interrupted:
                for attempt in self.pending:
                    self.launches.cancel(attempt, "job_abandoned", "the run stopped before its update arrived",
                                         round=self.version)
                self.pending = []

    def in_flight(self) -> list[Attempt]:
        """Jobs launched whose updates have not been taken in (those that ended in the last poll included)."""
        return self.arriving + self.pending

    # --- arrivals --------------------------------------------------------------------------------

    def _arrived(self, attempt: Attempt) -> None:
        destination = self.context.run_dir.update_dir(attempt.round, f"{attempt.facility}-{attempt.attempt_id}")
        current = self.chain.get(self.version)
        update = self.intake.collect(attempt, self.version + 1, current, destination)
        if update is not None and update.staleness > self.algorithm.max_staleness:
            self._reject_stale(attempt, update)
            update = None
        if update is None:
            self._lost(attempt)
            return
        self.losses[attempt.facility] = 0
        self.buffer[attempt.attempt_id] = Buffered(attempt, update)
        self._apply(self.policy.arrived(attempt.attempt_id, attempt.facility, self.clock.now()))

    def _reject_stale(self, attempt: Attempt, update: Update) -> None:
        self.intake.reject(
            attempt, self.version + 1, "stale",
            f"trained from global {update.based_on_round}, {update.staleness} versions behind global "
            f"{self.version}; algorithm.max_staleness is {self.algorithm.max_staleness}",
        )

    def _lost(self, attempt: Attempt) -> None:
        losses = self.losses.get(attempt.facility, 0) + 1
        self.losses[attempt.facility] = losses
        relaunch = losses < MAX_CONSECUTIVE_LOSSES
        if not relaunch:
            self.retired.add(attempt.facility)
            self.events.record("facility_retired", self.version, attempt.facility,
                               reason=f"{losses} jobs in a row ended without an accepted update")
        self._apply(self.policy.lost(attempt.facility, self.clock.now(), relaunch))

    # --- decisions -------------------------------------------------------------------------------

    def _apply(self, decision: Decision) -> None:
        for key in decision.discard:
            if (superseded := self.buffer.pop(key, None)) is not None:
                self.events.record("superseded", self.version + 1, superseded.attempt.facility,
                                   attempt=key, reason="a newer update of the same facility replaces it")
        updates = self._still_fresh([key for key in decision.aggregate if key in self.buffer], decision)
        planned = [self._plan(dispatch) for dispatch in decision.launch if dispatch.facility not in self.retired]
        if updates:
            self._commit(updates, planned, decision)
        self._launch(planned)
        if updates and self.committed_hook is not None:  # after the launches: facilities need not wait for it
            self.committed_hook(self.version)

    def _still_fresh(self, keys: list[str], decision: Decision) -> list[tuple[Buffered, Update]]:
        """The updates to apply, with their staleness now; those too stale or whose base is gone are rejected."""
        fresh = []
        for key in keys:
            buffered = self.buffer.pop(key)
            update = buffered.update
            staleness = self.version - update.based_on_round
            base = self.context.run_dir.global_dir(update.based_on_round)
            if staleness > self.algorithm.max_staleness or not base.exists():
                self._reject_stale(buffered.attempt, replace(update, staleness=staleness))
                continue
            fresh.append((buffered, replace(update, staleness=staleness, base=ExchangeDir(base))))
        return fresh

    def _plan(self, dispatch: Dispatch) -> Attempt:
        """A job to launch, numbered now so its id and seed are the same in a resumed run."""
        attempt_id = f"j{self.serial:05d}"
        seed = self.algorithm.seed + self.serial
        self.serial += 1
        return Attempt(dispatch.facility, -1, attempt_id, dispatch.local_steps, seed, None, self.clock.now())

    def _commit(self, updates: list[tuple[Buffered, Update]], planned: list[Attempt], decision: Decision) -> None:
        version = self.version + 1
        for attempt in planned:
            attempt.round = version + 1
        state = self._state(version, planned)
        staleness = {buffered.attempt.attempt_id: update.staleness for buffered, update in updates}
        self.chain.commit(
            version,
            [update for _, update in updates],
            extra_meta={STATE_KEY: json.dumps(state)},
            staleness=staleness,
            attempts=[buffered.attempt.attempt_id for buffered, _ in updates],
            group=decision.group,
        )
        self.version = version
        losses = [loss for _, update in updates if (loss := _mean_loss(update)) is not None]
        mean_loss = sum(losses) / len(losses) if losses else None
        seconds = self.clock.now() - self.last_commit_at
        self.events.record("round_complete", version, seconds=seconds, mean_loss=mean_loss, num_updates=len(updates),
                           start=self.last_commit_at)
        self.last_commit_at = self.clock.now()
        for _, update in updates:
            for source in (update.source, update.base):
                if isinstance(source, ExchangeDir):
                    source.close()
            if isinstance(update.source, ExchangeDir):
                shutil.rmtree(update.source.path, ignore_errors=True)  # applied: the global holds it now
        self.chain.prune(version)

    def _launch(self, planned: list[Attempt]) -> None:
        for attempt in planned:
            if attempt.round < 0:
                attempt.round = self.version + 1
            self._start(attempt, restore_at=None)

    def _launch_all(self, dispatches: list[Dispatch]) -> None:
        self._launch([self._plan(dispatch) for dispatch in dispatches])

    def _start(self, attempt: Attempt, restore_at: float | None) -> None:
        if restore_at is None:
            restore_at = self._launched_before(attempt)
        try:
            staged = self.chain.staged(attempt.round - 1)
            launched = self.launches.launch(attempt.round, attempt.facility, attempt.local_steps, staged, attempt.seed,
                                            attempt.attempt_id, restore_at=restore_at)
        except RunInterrupted:
            raise
        except FedhpcError as e:
            self.events.record("job_finished", attempt.round, attempt.facility, state="failed", reason=str(e),
                               seconds=0.0, attempt=attempt.attempt_id)
            self._lost(attempt)
            return
        self.pending.append(launched)

    def _launched_before(self, attempt: Attempt) -> float | None:
        """When a server stopped after the last commit had launched this very job (same id and facility), if it did.

        The job counter is restored from the last commit, so the jobs that server launched after it
        are planned again under the same ids: they are taken in (reattached or collected), not run twice.
        """
        for event in self.events.ledger.events("launching", round=attempt.round):
            if event.facility == attempt.facility and event.detail.get("attempt") == attempt.attempt_id:
                return float(event.detail.get("started_at", event.ts))
        return None

    def _next_wake(self) -> float | None:
        times = [self.launches.timeout_at(attempt) for attempt in self.pending]
        if (policy_wake := self.policy.next_wake()) is not None:
            times.append(policy_wake)
        future = [t for t in times if t > self.clock.now()]
        return min(future) if future else None

    # --- persistence -----------------------------------------------------------------------------

    def _state(self, version: int, planned: list[Attempt]) -> dict[str, Any]:
        return {
            "version": version,
            "now": self.clock.now(),
            "serial": self.serial,
            "in_flight": [attempt.record() for attempt in self.arriving + self.pending + planned],
            "buffer": [
                {**buffered.attempt.record(), "path": str(_path(buffered.update))}
                for buffered in self.buffer.values()
            ],
            "policy": self.policy.state(),
            "losses": dict(self.losses),
            "retired": sorted(self.retired),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state["version"] != self.version:  # (the orchestrator has already restored a virtual clock)
            raise FedhpcError(
                f"the saved asynchronous state is for version {state['version']}, the ledger's last is "
                f"{self.version}; the run directory was changed by hand. Start a new run_dir."
            )
        self.serial = int(state["serial"])
        self.policy.restore(state["policy"])
        self.losses = {name: int(count) for name, count in state.get("losses", {}).items()}
        self.retired = set(state.get("retired", []))
        self.progress.message(
            f"resuming after version {self.version}: {len(state['in_flight'])} job(s) in flight, "
            f"{len(state['buffer'])} update(s) buffered"
        )
        current = self.chain.get(self.version)
        for record in state["buffer"]:
            attempt = attempt_from_record(record)
            try:
                update = self.intake.verified(Path(record["path"]), attempt.facility, attempt.round, current,
                                              attempt.local_steps)
            except UpdateRejected as e:
                self.intake.reject(attempt, self.version + 1, e.reason, f"after the restart: {e}")
                continue
            self.buffer[attempt.attempt_id] = Buffered(attempt, update)
        for record in state["in_flight"]:
            attempt = attempt_from_record(record)
            self._start(attempt, restore_at=attempt.started_at)


def _mean_loss(update: Update) -> float | None:
    source = update.source
    if not isinstance(source, ExchangeDir):
        return None
    losses = source.manifest.metrics.get("loss") or []
    return sum(losses) / len(losses) if losses else None


def _path(update: Update) -> Path:
    assert isinstance(update.source, ExchangeDir), "buffered updates are pulled exchange directories"
    return update.source.path
