"""What the two recipes share: the task, the rank, the base model, the progress file, leaving the job.

A recipe runs one task on one rank in phases read top to bottom: validate
(`__init__`) → `setup` (join the job, build the base model, `prepare_task`) →
`train` → `save` → `cleanup`. `mode: init` is `fedhpc.worker.init_recipe`,
`mode: train` is `fedhpc.worker.train_recipe`; whether the model is whole or
sharded is the loaded model's own business (`fedhpc.worker.loaded`).

A persistent worker (`fedhpc.worker.persistent`) gives a recipe the base model
it loaded once and runs `prepare_task` → `train` → `save` for each task.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

from fedhpc.atomic_files import atomic_write_json
from fedhpc.errors import ModelError
from fedhpc.exchange import WorkerTask
from fedhpc.worker.device import resolve_device
from fedhpc.worker.distributed import RankEnv, barrier, destroy_process_group
from fedhpc.worker.loaded import LoadedModel, load_model
from fedhpc.worker.object_staging import FacilityStore
from fedhpc.worker.train import TrainResult


class Recipe(ABC):
    """One task on one rank. Attributes set in `setup` are used by the later phases.

    `loaded`: a base model already built from `task.model` (a persistent worker's).
    `store`: where the global comes from and the output and progress go (a proxystore mover's).
    """

    def __init__(
        self, task: WorkerTask, env: RankEnv, loaded: LoadedModel | None = None, store: FacilityStore | None = None
    ):
        if loaded is not None and loaded.config != task.model:
            raise ModelError("the loaded base model was built from another model section than the task's")
        self.task = task
        self.env = env
        self.device = resolve_device(task.device, env)
        self.local_steps = task.train.local_steps if task.train is not None else 0
        self.loaded = loaded
        self.store = store
        self.loaded_here = False  # whether `load_base` built the model (its time then counts in load_seconds)
        self.result: TrainResult | None = None
        self.load_seconds = 0.0

    @abstractmethod
    def setup(self) -> None:
        """Join the job and make the model ready for `train`."""

    @abstractmethod
    def prepare_task(self) -> None:
        """Everything before training that depends on the task, given the base model."""

    @abstractmethod
    def train(self) -> None:
        """The task's training, if it has any."""

    @abstractmethod
    def save(self) -> None:
        """Publish this task's output, then mark the progress file done."""

    def load_base(self) -> None:
        """Build base model + adapters, unless the recipe was given them."""
        if self.loaded is None:
            self._progress("loading")
            self.loaded = load_model(self.task.model, self.env, self.device)
            self.loaded_here = True

    def built_seconds(self) -> float:
        """The base model's build time when this recipe built it (it then counts in `load_seconds`)."""
        assert self.loaded is not None, "load_base first"
        return self.loaded.seconds if self.loaded_here else 0.0

    def cleanup(self) -> None:
        """Hold every rank until rank 0 has published, then leave the process group."""
        barrier()
        destroy_process_group()

    def _progress(self, phase: str, step: int = 0, loss: float | None = None) -> None:
        if self.env.is_main and self.task.progress_file is not None:
            write_progress(self.task.progress_file, self.task.round, step, self.local_steps, loss, phase)
            if self.store is not None:
                self.store.publish_progress(self.task.progress_file, phase)


def write_progress(path: Path, round_: int, step: int, local_steps: int, loss: float | None, phase: str) -> None:
    """Rewrite progress.json atomically (docs/contracts.md), so a reader never sees half a file."""
    payload = {
        "round": round_, "step": step, "local_steps": local_steps, "loss": loss, "phase": phase,
        "updated_at": time.time(),
    }  # fmt: skip
    atomic_write_json(path, payload, make_parents=True)
