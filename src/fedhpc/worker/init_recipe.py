"""`mode: init`: build the seeded base model and adapters and publish their trainable state as the round-0 global.

The server runs it as one process (`fedhpc.run`), never through a store. The
state is a function of the seed, so every facility that builds the same model
section starts from the same global. For full fine-tuning of a pretrained
model the job streams the round-0 global from the checkpoint instead
(`fedhpc.worker.main.execute_task`, `fedhpc.worker.initial_global`).
"""

from __future__ import annotations

import logging
import time

import torch

from fedhpc.exchange import ExchangeMeta, write_state_dict
from fedhpc.worker.device import describe
from fedhpc.worker.distributed import init_process_group
from fedhpc.worker.model import extract_trainable
from fedhpc.worker.recipe import Recipe

logger = logging.getLogger(__name__)


class InitRecipe(Recipe):
    """The round-0 global: the trainable state as built, an fp32 master copy written by rank 0."""

    def setup(self) -> None:
        """Join the job and build base model + adapters."""
        init_process_group(self.env, self.device)
        self.load_base()
        self.prepare_task()

    def prepare_task(self) -> None:
        """Nothing to apply or read: only the time before saving is measured (`load_seconds`)."""
        task, env = self.task, self.env
        start = time.perf_counter()
        self._progress("loading")
        logger.info(
            "round %d at %s: %s on %d rank(s), device %s", task.round, task.facility, task.mode, env.world_size,
            self.device,
        )
        self.load_seconds = self.built_seconds() + time.perf_counter() - start

    def train(self) -> None:
        """Nothing: the round-0 global is the model as built."""

    def save(self) -> None:
        """Rank 0 writes the trainable state in fp32 (atomically, manifest last)."""
        self._progress("saving", step=self.local_steps)
        if not self.env.is_main:
            return
        assert self.loaded is not None
        meta = ExchangeMeta(
            kind="global",
            round=0,
            base_fingerprint=self.loaded.fingerprint,
            metrics={"load_seconds": self.load_seconds, "device": describe(self.device)},
        )
        state = extract_trainable(self.loaded.model, torch.float32)
        manifest = write_state_dict(self.task.update_dir, state, meta, self.task.shard_bytes)
        logger.info("wrote %s: %d tensors", self.task.update_dir, len(manifest.tensors))
        if self.store is not None:
            self.store.publish(self.task.update_dir)
        self._progress("done", step=self.local_steps)
