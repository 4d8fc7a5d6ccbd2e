"""The chain of global models: build round 0, stage copies for facilities, aggregate and commit the next.

Named a chain, not a store, because that is what it holds: global `r` exists only
as global `r - 1` with round `r`'s updates aggregated into it, together with the
aggregator's state after it; this class makes each link and prunes the old ones.

A global is complete when its directory is in place, the aggregator's state
after it is saved, and the ledger row is committed, in that order: a server
killed between any two steps resumes from the previous global and redoes the
round, never from a global whose optimiser state is missing.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedhpc.aggregate import Aggregator, Update
from fedhpc.config import AlgorithmConfig, DataConfig, ExchangeConfig, ModelConfig
from fedhpc.errors import FedhpcError, UpdateRejected
from fedhpc.exchange import (
    ExchangeDir,
    ExchangeMeta,
    WorkerTask,
    dtype_from_name,
    write_exchange,
    write_state_dict,
)
from fedhpc.run.best_round import protected_rounds
from fedhpc.run.context import RunContext
from fedhpc.run.server_command import run_server_command

if TYPE_CHECKING:  # imported by the orchestrator only when privacy is on: dp-accounting loads scipy
    from fedhpc.run.privacy_budget import PrivacyBudget


@dataclass(frozen=True)
class Committed:
    round: int
    seconds: float
    bytes: int


class GlobalChain:
    """Globals built for `model` on `data`, written in `exchange`'s shards, aggregated by `algorithm`'s rule.

    `keep_last` globals stay on disk (`prune`): a stale update is applied against the one it was trained from.
    """

    def __init__(
        self, context: RunContext, aggregator: Aggregator, algorithm: AlgorithmConfig, model: ModelConfig,
        data: DataConfig, exchange: ExchangeConfig, keep_last: int, privacy: PrivacyBudget | None = None,
    ):
        """`privacy`: the run's budget when `privacy:` is on (its `wrap` of `aggregator` is what aggregates)."""
        self.context = context
        self.events = context.events
        self.clock = context.clock
        self.progress = context.progress
        self.aggregator = aggregator
        self.algorithm = algorithm
        self.model = model
        self.data = data
        self.exchange = exchange
        self.keep_last = keep_last
        self.privacy = privacy
        self.server_state: dict[str, torch.Tensor] | None = None  # None: read it from the run directory

    def get(self, round: int) -> ExchangeDir:
        return ExchangeDir(self.context.run_dir.global_dir(round))

    def initialise(self) -> None:
        """Round 0: one worker process writes the seeded initial trainable state as the first global.

        The worker writes into a directory of its own under `logs/r0000/`, which is verified and then
        renamed into `global/r0000`: the init of a killed server, still running when the server is
        restarted, publishes into its own directory and can never collide with its successor's.
        The initial state is a function of the seed, so which of them builds it does not matter.
        """
        self.context.run_dir.discard_after(-1)
        destination = self.context.run_dir.global_dir(0)
        log_dir = self.context.run_dir.log_dir(0)
        log_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="init-", dir=log_dir))
        built = work / "global"
        task = WorkerTask(
            mode="init",
            round=0,
            facility="server",
            update_dir=built,
            model=self.model,
            data_config=self.data,
            shard_bytes=int(self.exchange.shard_size),
            device="cpu",
            progress_file=work / "progress.json",
        )
        task_path = work / "init-task.json"
        task.write(task_path)
        started = self.clock.now()
        with self.progress.phase("round 0: building the initial global model", task.progress_file):
            failure = run_server_command("init", ["worker", "--task", str(task_path)], work)
        if failure:
            raise FedhpcError(f"building the initial global failed: {failure}")
        try:
            ExchangeDir(built).verify()
        except UpdateRejected as e:
            raise FedhpcError(f"building the initial global failed: {built} does not verify ({e})") from e
        shutil.rmtree(destination, ignore_errors=True)  # only a rename ever writes it: a whole global, or debris
        destination.parent.mkdir(parents=True, exist_ok=True)
        built.rename(destination)
        manifest = ExchangeDir(destination).manifest
        ledger = self.events.ledger
        event_id = ledger.complete_round(0, str(destination), 0, seconds=self.clock.now() - started)
        self.events.emit("aggregated", round=0, num_updates=0, seconds=self.clock.now() - started, start=started,
                         bytes=0, ledger_id=event_id)
        ledger.set_meta("base_fingerprint", manifest.base_fingerprint)

    def staged(self, round: int) -> Path:
        """Global `round` as facilities receive it: the fp32 master, or a copy cast to the training dtype."""
        global_ = self.get(round)
        wanted = self.exchange.stage_dtype
        if wanted == "auto":
            wanted = self.model.dtype
        if wanted == "float32":
            return global_.path
        destination = self.context.run_dir.stage_dir(round)
        if not destination.exists():
            dtype = dtype_from_name(wanted)
            meta = ExchangeMeta(**global_.manifest.model_dump(include=set(ExchangeMeta.model_fields)))
            write_exchange(
                destination,
                global_.layout(dtype),
                ((name, global_.get(name).to(dtype)) for name in global_.names()),
                meta,
                int(self.exchange.shard_size),
            )
        return destination

    def commit(
        self, round: int, updates: list[Update], extra_meta: dict[str, str] | None = None, **detail: object
    ) -> Committed:
        """Aggregate `updates` into global `round - 1`, publish global `round` and commit it to the ledger.

        `extra_meta` (a scheduler's state) is committed in the same transaction as the round. With privacy on,
        a round past `privacy.target_epsilon` is refused before anything is aggregated (`PrivacyBudgetReached`),
        and the round's ε, δ and clipping go into its ledger row and `aggregated` event.
        """
        if self.privacy is not None:
            self.privacy.check_before(round)
        started = self.clock.now()
        global_ = self.get(round - 1)
        destination = self.context.run_dir.global_dir(round)
        meta = ExchangeMeta(kind="global", round=round, base_fingerprint=global_.manifest.base_fingerprint)
        state = self.server_state if self.server_state is not None else self._load_server_state(round - 1)
        self.server_state = None  # the aggregator updates it in place: until saved, only the disk copy is whole
        manifest = write_exchange(
            destination,
            global_.layout(torch.float32),
            self.aggregator.aggregate(global_, sorted(updates, key=lambda u: u.facility), state),
            meta,
            int(self.exchange.shard_size),
        )
        global_.close()
        self._save_server_state(round, state, meta.base_fingerprint)
        self.server_state = state
        size = sum(f.bytes for f in manifest.files.values())
        if self.privacy is not None:
            detail = {**detail, **self.privacy.round_fields(round)}
        fields = dict(
            algorithm=self.algorithm.name,
            seconds=self.clock.now() - started,
            start=started,
            bytes=size,
            facilities=sorted(u.facility for u in updates),
            **detail,
        )
        event_id = self.events.ledger.complete_round(round, str(destination), len(updates), meta=extra_meta, **fields)
        self.events.emit("aggregated", round=round, num_updates=len(updates), ledger_id=event_id, **fields)
        if self.privacy is not None:
            self.progress.privacy_spent(round, fields.get("epsilon"), self.privacy.privacy.delta)
        return Committed(round, self.clock.now() - started, size)

    def prune(self, latest: int) -> None:
        self.context.run_dir.prune(latest, self.keep_last, protect=protected_rounds(self.events.ledger))

    def _save_server_state(self, round: int, state: dict[str, torch.Tensor], fingerprint: str) -> None:
        """Publish the aggregator's state after `round` (empty for stateless algorithms) as an exchange directory.

        It is a `global`-kind directory marked `content: server_state` in its manifest metrics.
        """
        meta = ExchangeMeta(
            kind="global",
            round=round,
            base_fingerprint=fingerprint,
            metrics={"content": "server_state", "algorithm": self.algorithm.name},
        )
        write_state_dict(self.context.run_dir.server_state_dir(round), state, meta, int(self.exchange.shard_size))

    def _load_server_state(self, round: int) -> dict[str, torch.Tensor]:
        """The aggregator's state saved after `round`, verified like an update; round 0 has none."""
        if round == 0:
            return {}
        path = self.context.run_dir.server_state_dir(round)
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
