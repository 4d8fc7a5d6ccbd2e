"""`fedhpc worker --persistent --inbox DIR`: one job that trains task after task, the base model loaded once.

On a supercomputer every batch job waits in the queue and then pays process
start-up and the base model's load; a persistent worker pays them once per
allocation. It is started like a per-round job (torchrun, mpiexec, srun: every
rank runs this command), joins the process group once, builds the base model
and adapters once, and then loops:

    rank 0 looks at the inbox ──broadcast──► every rank: idle | task | stop
    task: read task.json → apply the global → read data → train → publish the update (`TrainRecipe`)
          → rank 0 writes results/<seq>.json

The inbox is the server–facility contract (docs/contracts.md, "Persistent
worker inbox"; its files in `fedhpc.worker.inbox`): the server writes
``assign/<seq>/assignment.json``, ``cancel/<seq>/`` and ``stop``; the worker
writes ``results/<seq>.json`` and rewrites ``heartbeat.json`` every
`heartbeat_interval` seconds from a thread on rank 0. Everything is JSON; rank 0 hands the next command to the other ranks as
UTF-8 bytes in a uint8 tensor (no pickle, unlike `broadcast_object_list`).

Nothing of one task survives into the next: every trainable tensor is
overwritten by the task's global, the optimizer is built per task, and the
task's seed is set before training, so an update is bit-identical to what a
per-round job would publish. A task that fails before training (a bad global,
unreadable data) is reported in its result and the worker goes on; a failure
during training in a multi-rank job leaves the ranks out of step, so the worker
exits non-zero and the server replaces it.

The worker exits 0 on its own when it finds ``stop`` or has had no work for
`idle_timeout` seconds, so an allocation orphaned by a dead server is not burned.

    GLOO_SOCKET_IFNAME=lo python -m torch.distributed.run --no-python --nproc-per-node 2 \\
        --master-addr 127.0.0.1 --master-port 29500 python -m fedhpc worker --persistent --inbox DIR
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from transformers.utils.logging import disable_progress_bar

from fedhpc.config import Device, ModelConfig
from fedhpc.errors import FedhpcError
from fedhpc.exchange.manifest import MANIFEST_NAME
from fedhpc.lifeline import follow_parent
from fedhpc.worker.device import describe, empty_cache, resolve_device
from fedhpc.worker.distributed import RankEnv, all_reduce_sum, destroy_process_group, init_process_group, rank_env
from fedhpc.worker.inbox import Heartbeat, Inbox
from fedhpc.worker.loaded import LoadedModel, load_model
from fedhpc.worker.main import LOG_FORMAT, read_task, recipe_for
from fedhpc.worker.recipe import Recipe

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
"""How often rank 0 looks at the inbox while idle (and the ranks exchange a command)."""


class OutOfStep(FedhpcError):
    """A rank failed where the others may be blocked in a collective: the job cannot go on."""


@dataclass(frozen=True)
class Command:
    """What rank 0 tells every rank at each tick."""

    op: Literal["idle", "task", "stop"]
    seq: str = ""
    task: str = ""
    reason: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        return cls(**json.loads(data.decode()))


def share_command(command: Command | None, env: RankEnv, device: torch.device) -> Command:
    """Rank 0's `command` (None on the other ranks), on every rank."""
    if not env.distributed:
        assert command is not None
        return command
    return Command.decode(share_bytes(command.encode() if command is not None else b"", env, device))


def share_bytes(data: bytes, env: RankEnv, device: torch.device) -> bytes:
    """Rank 0's `data` on every rank: its length, then the bytes in a uint8 tensor (no pickle)."""
    if not env.distributed:
        return data
    length = torch.tensor([len(data) if env.is_main else 0], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    if not length.item():
        return b""
    if env.is_main:
        payload = torch.tensor(list(data), dtype=torch.uint8, device=device)
    else:
        payload = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=0)
    return payload.cpu().numpy().tobytes()


def count_failures(failed: bool, device: torch.device) -> int:
    """How many ranks failed (every rank learns it; also a barrier)."""
    return int(all_reduce_sum([1.0 if failed else 0.0], device)[0])


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, FedhpcError) else f"{type(error).__name__}: {error}"


class PersistentWorker:
    """The loop of one rank; see the module docstring."""

    def __init__(
        self, inbox: Path, env: RankEnv, device: Device, heartbeat_interval: float,
        idle_timeout: float,
    ):
        self.inbox = Inbox(inbox)
        self.env = env
        self.device = resolve_device(device, env)
        self.idle_timeout = idle_timeout
        self.loaded: LoadedModel | None = None
        self.heartbeat: Heartbeat | None = None
        self.tasks_done = 0
        if env.is_main:
            self.inbox.create()
            self.heartbeat = Heartbeat(
                self.inbox.heartbeat_path, heartbeat_interval, worker=self.inbox.root.name, pid=os.getpid(),
                host=socket.gethostname(), world_size=env.world_size, device=describe(self.device),
                base_load_seconds=None, tasks_done=0,
            )

    def run(self) -> int:
        """Loop until stopped; return the exit status (0: stopped or idle; raises on a fatal failure)."""
        env = self.env
        if self.heartbeat is not None:
            self.heartbeat.start()
        try:
            init_process_group(env, self.device)
            model = self.inbox.model_config() if env.is_main else None
            model = self._share_model(model)
            if model is not None:
                self._load(model)
            self._beat(state="idle")
            idle_since = time.monotonic()
            while True:
                command = self._next_command(idle_since) if env.is_main else None
                command = share_command(command, env, self.device)
                if command.op == "stop":
                    logger.info("stopping: %s", command.reason)
                    break
                if command.op == "idle":
                    if env.is_main:  # the other ranks wait in the next broadcast
                        time.sleep(POLL_SECONDS)
                    continue
                self._run_task(command)
                idle_since = time.monotonic()
        except BaseException:
            if self.heartbeat is not None:
                self.heartbeat.stop("failed")
            raise
        if self.heartbeat is not None:
            self.heartbeat.stop("stopped")
        destroy_process_group()
        return 0

    # --- rank 0 decides ---------------------------------------------------------------------------

    def _next_command(self, idle_since: float) -> Command:
        inbox = self.inbox
        if inbox.stopped():
            return Command("stop", reason="the server wrote the stop file")
        for seq in inbox.pending():
            if inbox.cancelled(seq):
                logger.info("task %s was cancelled before it started; skipping it", seq)
                inbox.write_result(seq, {"ok": False, "cancelled": True, "error": "cancelled before it started"})
                continue
            try:
                task = str(inbox.assignment(seq)["task"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                inbox.write_result(seq, {"ok": False, "error": f"unreadable assignment: {e}"})
                continue
            if self._already_published(task):
                inbox.write_result(seq, {"ok": True, "already_published": True, "load_seconds": 0.0})
                continue
            return Command("task", seq=seq, task=task)
        if time.monotonic() - idle_since > self.idle_timeout:
            return Command("stop", reason=f"no work for {self.idle_timeout:g} s (idle_timeout)")
        return Command("idle")

    @staticmethod
    def _already_published(task_path: str) -> bool:
        """A task re-assigned after its first worker died having published the update: nothing to redo.

        (Exchange directories are written once; a second write would fail.)
        """
        try:
            return (read_task(Path(task_path)).update_dir / MANIFEST_NAME).exists()
        except FedhpcError:
            return False  # every rank reads it again and reports why it cannot

    def _share_model(self, model: ModelConfig | None) -> ModelConfig | None:
        """Rank 0's reading of worker.json, so every rank builds the same base model (or none yet)."""
        data = share_bytes(model.model_dump_json().encode() if model is not None else b"", self.env, self.device)
        return ModelConfig.model_validate_json(data) if data else None

    # --- every rank -------------------------------------------------------------------------------

    def _load(self, model: ModelConfig) -> None:
        """Build the base model and adapters (dropping the old ones first: two might not fit in memory)."""
        self._beat(state="loading")
        self.loaded = None
        gc.collect()
        self.loaded = load_model(model, self.env, self.device)
        logger.info("base model loaded in %.2f s", self.loaded.seconds)
        self._beat(base_load_seconds=self.loaded.seconds)

    def _run_task(self, command: Command) -> None:
        """One task on this rank; rank 0 writes its result. Raises `OutOfStep` when the job cannot go on."""
        env, seq = self.env, command.seq
        self._beat(state="training", seq=seq)
        started = time.time()
        logger.info("task %s: %s", seq, command.task)
        recipe: Recipe | None = None
        error: str | None = None
        try:
            task = read_task(Path(command.task))
            if resolve_device(task.device, env) != self.device:
                raise FedhpcError(f"the task asks for device {task.device!r}; this worker runs on {self.device}")
            rebuilt = 0.0
            if self.loaded is None or self.loaded.config != task.model:  # none announced, or another model
                self._load(task.model)
                self._beat(state="training")
                assert self.loaded is not None
                rebuilt = self.loaded.seconds
            recipe = recipe_for(task, env, self.loaded)
            recipe.prepare_task()
            recipe.load_seconds += rebuilt  # a build this task waited for counts in its load time
        except Exception as e:  # noqa: BLE001 - reported in the result; the next task may well work
            error = _describe(e)
            logger.error("rank %d of %d: task %s failed before training: %s", env.rank, env.world_size, seq, error)
        failures = count_failures(error is not None, self.device)
        if failures:
            self._finish(seq, {"ok": False, "error": error or f"{failures} other rank(s) failed preparing the task; "
                                                                "see the worker's log"}, started)
            return
        assert recipe is not None
        try:
            recipe.train()
        except Exception as e:
            if env.distributed:  # the other ranks may wait in a collective forever: end the job
                raise OutOfStep(f"task {seq} failed during training on rank {env.rank}: {_describe(e)}") from e
            error = _describe(e)
            logger.error("task %s failed during training: %s", seq, error)
        if error is None:
            try:
                recipe.save()
            except Exception as e:  # noqa: BLE001 - only rank 0 writes; the others wait below
                error = _describe(e)
                logger.error("task %s: publishing the update failed: %s", seq, error)
        failures = count_failures(error is not None, self.device)
        if failures:
            self._finish(seq, {"ok": False, "error": error or "rank 0 could not publish the update"}, started)
            return
        metrics = {"load_seconds": recipe.load_seconds, "round": recipe.task.round,
                   "train_seconds": recipe.result.seconds if recipe.result is not None else 0.0}
        self._finish(seq, {"ok": True, **metrics}, started)

    def _finish(self, seq: str, result: dict[str, Any], started: float) -> None:
        gc.collect()  # the task's DDP wrapper (its reducer's autograd hooks) must be gone before the next one wraps
        empty_cache(self.device)
        if self.env.is_main:
            self.inbox.write_result(seq, {**result, "started_at": started})
            outcome = "done" if result["ok"] else f"failed: {result['error']}"
            logger.info("task %s %s in %.2f s", seq, outcome, time.time() - started)
        self.tasks_done += 1
        self._beat(state="idle", seq=seq, tasks_done=self.tasks_done)

    def _beat(self, **fields: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.update(**fields)


def run_persistent(
    inbox: Path | str, heartbeat_interval: float, idle_timeout: float, device: Device = "auto"
) -> None:
    """The `fedhpc worker --persistent` command on this rank: exit 0 when stopped or idle, 1 on a fatal failure."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    follow_parent()  # a rank started by a local launcher dies with its torchrun
    env = RankEnv()
    try:
        env = rank_env()
        logging.getLogger("fedhpc").setLevel(logging.INFO if env.is_main else logging.ERROR)
        disable_progress_bar()
        worker = PersistentWorker(Path(inbox), env, device, heartbeat_interval, idle_timeout)
        code = worker.run()
    except FedhpcError as e:
        logger.error("rank %d of %d: persistent worker in %s failed: %s", env.rank, env.world_size, inbox, e)
        raise SystemExit(1) from e
    except Exception as e:
        logger.exception("rank %d of %d: persistent worker in %s failed: %s", env.rank, env.world_size, inbox, e)
        raise SystemExit(1) from e
    raise SystemExit(code)
