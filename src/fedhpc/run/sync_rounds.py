"""Synchronous rounds (FedAvg and the server optimisers): every participant trains from the same global.

One round: stage → launch → wait (until every job ended, or the deadline with
a quorum) → aggregate → commit. Who takes part and when a round may close is
`SyncPolicy`'s call.

With `algorithm.late_updates: next_round`, a job still running when its round
closed is carried into the next round's list of jobs. The carried jobs are
committed with the round (ledger meta `sync_carried`), so a restarted server
picks them up again (reattached, or collected if their update was published
meanwhile, or else run again) instead of forgetting them.

The jobs of the round a server was stopped in (killed, or interrupted with
`--on-interrupt keep`) are found the same way, from their `launching` events
without an end: a resumed server takes them in before it launches anything.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fedhpc.aggregate import Update
from fedhpc.config import AlgorithmConfig
from fedhpc.errors import FedhpcError, QuorumNotMet, RunInterrupted, UpdateRejected
from fedhpc.exchange import ExchangeDir
from fedhpc.run.context import RunContext
from fedhpc.run.global_chain import GlobalChain
from fedhpc.run.intake import Intake
from fedhpc.run.launches import Attempt, Launches, attempt_from_record
from fedhpc.run.scheduling import SyncPolicy

if TYPE_CHECKING:
    from fedhpc.run.secure_rounds import SecureRounds


CARRIED_KEY = "sync_carried"
ENDED = ("job_finished", "job_cancelled", "late_dropped", "job_abandoned", "rejected", "accepted")
"""Events after which an attempt is over (`job_finished` only when the job did not end DONE: its update may wait)."""


class SyncRounds:
    def __init__(
        self, context: RunContext, algorithm: AlgorithmConfig, launches: Launches, intake: Intake, chain: GlobalChain,
        policy: SyncPolicy | None = None, secure: SecureRounds | None = None,
    ):
        """`policy`: who takes part and when a round may close; by default `SyncPolicy` (privacy: Poisson's).

        `secure`: secure aggregation's part of each round (keys, roster, the unmask round); None: off.
        """
        self.context = context
        self.events = context.events
        self.clock = context.clock
        self.progress = context.progress
        self.algorithm = algorithm
        self.launches = launches
        self.intake = intake
        self.chain = chain
        self.policy = policy or SyncPolicy(algorithm, list(launches.facilities))
        self.secure = secure
        self.carried: list[Attempt] = []  # late jobs of closed rounds whose updates count in the next (next_round)
        self.pending: list[Attempt] = []  # jobs of the current round still running
        self._restore_carried()

    def run_round(self, round: int) -> float | None:
        """Run `round` to its commit; return the mean training loss of its updates."""
        round_started = self.clock.now()
        attempts, self.carried = self.carried, []
        busy = {attempt.facility for attempt in attempts}  # a facility is not relaunched until it delivers
        assignments = self.policy.assignments(round)
        participants = [a.facility for a in assignments]
        self.events.record("round_started", round, participants=participants, carried=sorted(busy))
        if self.secure is not None:  # the participants' keys and the roster every task of the round carries
            self.secure.prepare(round, participants)
        for name in self.launches.facilities:
            if name not in participants and name not in busy:
                self.progress.facility_state(name, "idle", round)
        previous = self.chain.get(round - 1)
        staged = self.chain.staged(round - 1)
        accepted = self._reusable_updates(round, previous)
        for assignment in assignments:
            if assignment.facility in accepted:
                self.progress.facility_state(assignment.facility, "reused", round)
                continue
            if assignment.facility in busy:
                self.progress.facility_state(assignment.facility, "late", round)
                continue
            unfinished = self._unfinished(round, assignment.facility)
            try:
                if unfinished is not None:  # launched by a server that was stopped: take it in first
                    attempts.append(self.launches.launch(round, assignment.facility, unfinished.local_steps, staged,
                                                         unfinished.seed, unfinished.attempt_id,
                                                         restore_at=unfinished.started_at))
                else:
                    attempts.append(self.launches.launch(round, assignment.facility, assignment.local_steps, staged,
                                                         self.algorithm.seed + round, f"r{round:04d}-a0"))
            except RunInterrupted:
                self.pending = attempts
                raise
            except FedhpcError as e:
                self.events.record("job_finished", round, assignment.facility, state="failed", reason=str(e),
                                   seconds=0.0)
                self.progress.facility_state(assignment.facility, "failed", round)
        self._settle_late(round, self._wait(round, attempts, accepted, previous, round_started))
        if not self.policy.quorum_met(len(accepted)):
            raise QuorumNotMet(
                f"round {round}: {len(accepted)} update(s) accepted, algorithm.min_facilities is "
                f"{self.algorithm.min_facilities}; see the ledger and "
                f"{self.context.run_dir.log_dir(round)}. Fix the failing facilities and run the same command "
                "again to resume."
            )
        carried = json.dumps([attempt.record() for attempt in self.carried])
        updates, detail = list(accepted.values()), {}
        if self.secure is not None:  # one extra message round, then the round's sum as its one update
            updates, detail = self.secure.aggregate(round, accepted, previous)
        self.chain.commit(round, updates, extra_meta={CARRIED_KEY: carried}, **detail)
        losses = [loss for u in accepted.values() if (loss := self._mean_loss(round, u.facility)) is not None]
        mean_loss = sum(losses) / len(losses) if losses else None
        self.events.record("round_complete", round, seconds=self.clock.now() - round_started, mean_loss=mean_loss,
                           start=round_started)
        self.chain.prune(round)
        return mean_loss

    def _unfinished(self, round: int, facility: str) -> Attempt | None:
        """The facility's last attempt at `round` if the ledger shows no end for it (its server was stopped).

        Ids are never reused (`Launches.fresh_attempt_id`), so a resumed server that runs it again
        takes a new one, and an orphan of the stopped server cannot overwrite its update.
        """
        ledger = self.events.ledger
        launched = [e for e in ledger.events("launching", round=round) + ledger.events("submitted", round=round)
                    if e.facility == facility and e.detail.get("attempt")]
        if not launched:
            return None
        last = max(launched, key=lambda e: e.id)
        attempt_id = last.detail["attempt"]
        for event in ledger.events(round=round):
            if event.facility != facility or event.id < last.id:
                continue
            if event.event == "relaunched" and event.detail.get("previous") == attempt_id:
                return None
            ended = event.event in ENDED and not (event.event == "job_finished" and event.detail.get("state") == "done")
            if ended and event.detail.get("attempt", attempt_id) == attempt_id:
                return None
        launching = next((e for e in launched if e.event == "launching" and e.detail["attempt"] == attempt_id), last)
        started_at = launching.detail.get("started_at", launching.detail.get("start", launching.ts))
        return Attempt(facility, round, attempt_id, int(launching.detail.get("local_steps", 0)),
                       int(launching.detail.get("seed", self.algorithm.seed + round)), None,
                       float(started_at))

    def _restore_carried(self) -> None:
        """After a restart: pick up the late jobs the last complete round carried."""
        saved = self.events.ledger.get_meta(CARRIED_KEY)
        for record in json.loads(saved) if saved else []:
            attempt = attempt_from_record(record)
            try:
                staged = self.chain.staged(attempt.round - 1)
                self.carried.append(self.launches.launch(attempt.round, attempt.facility, attempt.local_steps, staged,
                                                         attempt.seed, attempt.attempt_id,
                                                         restore_at=attempt.started_at))
            except RunInterrupted:
                raise
            except FedhpcError as e:
                self.events.record("job_finished", attempt.round, attempt.facility, state="failed",
                                   reason=f"could not pick up the late job after a restart: {e}", seconds=0.0)

    def in_flight(self) -> list[Attempt]:
        """Jobs launched and not yet ended: the current round's and the late ones carried into it."""
        return self.pending + self.carried

    def finish(self) -> None:
        """The run is over: jobs still carried, or still running in a round that failed, will never be applied."""
        for attempt in self.pending:
            self.launches.cancel(attempt, "job_abandoned", "the run stopped before its update arrived")
        for attempt in self.carried:
            self._drop_late(attempt, "the run ended before its update arrived")
        self.pending, self.carried = [], []

    def _reusable_updates(self, round: int, global_: ExchangeDir) -> dict[str, Update]:
        """Updates of this round already accepted before a crash still count: no facility redoes work.

        A stale update (a late job of an earlier round, accepted into this one) is reused too.
        """
        reusable = {}
        for event in self.events.ledger.events("accepted", round=round):
            path = self.context.run_dir.update_dir(round, event.facility or "")
            trained_round = round - int(event.detail.get("staleness", 0))
            try:
                reusable[event.facility] = self.intake.verified(path, event.facility, trained_round, global_)
            except UpdateRejected:
                continue
            self.events.record("reused", round, event.facility)
        return reusable

    def _wait(
        self, round: int, attempts: list[Attempt], accepted: dict[str, Update], global_: ExchangeDir,
        round_started: float,
    ) -> list[Attempt]:
        """Add the updates of finished jobs to `accepted` until the round may close; return the jobs still running.

        Without a round deadline that is when every job has ended (or been cancelled at its timeout).
        """
        self.pending = pending = list(attempts)
        while pending:
            for attempt in self.launches.poll(pending):
                destination = self.context.run_dir.update_dir(round, attempt.facility)
                update = self.intake.collect(attempt, round, global_, destination)
                if update is not None:
                    accepted[attempt.facility] = update
            if not pending or self.policy.may_close(round_started, len(accepted), self.clock.now()):
                break
            self.context.stop.check()
            self.clock.sleep_until(self._next_wake(pending, round_started))
        self.pending = []
        return pending

    def _next_wake(self, pending: list[Attempt], round_started: float) -> float | None:
        times = [self.launches.timeout_at(attempt) for attempt in pending]
        if self.algorithm.round_deadline is not None:
            times.append(round_started + self.algorithm.round_deadline)
        future = [t for t in times if t > self.clock.now()]
        return min(future) if future else None

    def _settle_late(self, round: int, late: list[Attempt]) -> None:
        """Jobs still running when `round` closed: carry them into the next round, or cancel them."""
        for attempt in late:
            if self.policy.late_updates == "next_round" and round < self.algorithm.rounds:
                self.carried.append(attempt)
                self.events.record("late_carried", round, attempt.facility,
                                   job_id=attempt.handle.job_id if attempt.handle else None,
                                   trained_round=attempt.round)
            elif self.policy.late_updates == "next_round":
                self._drop_late(attempt, "the run's last round closed without it")
            else:
                deadline = self.algorithm.round_deadline or 0.0
                self._drop_late(
                    attempt, f"algorithm.round_deadline ({deadline:g} s) passed and the round closed without it"
                )

    def _drop_late(self, attempt: Attempt, reason: str) -> None:
        """Cancel a job whose round closed without it; recorded as `late_dropped` under the job's round."""
        self.launches.cancel(attempt, "late_dropped", reason)

    def _mean_loss(self, round: int, facility: str) -> float | None:
        """The facility's mean training loss over its local steps this round, from the ledger."""
        for event in reversed(self.events.ledger.events("accepted", round=round)):
            if event.facility == facility and event.detail.get("loss"):
                return sum(event.detail["loss"]) / len(event.detail["loss"])
        return None
