"""`mode: train`: apply the staged global, train on this facility's data, publish the update.

The task says how long to train: `local_steps` optimizer steps, or `local_epochs`
passes over the facility's examples turned into steps here (`epoch_steps`), the
server's `local_steps` then being the most it may take. The manifest's
`local_steps` is the count actually trained, which the server weighs updates by.

Rank 0 alone logs and rewrites the progress file. The model is whole on every
rank or sharded over them (`fedhpc.worker.loaded`); this recipe reads the same
either way. With a store (a proxystore mover, `fedhpc.worker.object_staging`) each node's
first rank fetches the global before it is read, and rank 0 publishes the
update after writing it.
"""

from __future__ import annotations

import logging
import math
import time

from transformers import set_seed

from fedhpc.errors import ConfigError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, TrainSettings, WorkerTask
from fedhpc.worker.data import batches, read_examples, shard_indices
from fedhpc.worker.device import describe, length_multiple
from fedhpc.worker.distributed import RankEnv, barrier, init_process_group
from fedhpc.worker.loaded import LoadedModel, training_dtype
from fedhpc.worker.recipe import Recipe
from fedhpc.worker.object_staging import FacilityStore
from fedhpc.worker.train import train_local_steps

logger = logging.getLogger(__name__)


class TrainRecipe(Recipe):
    """One round's local training.

    `prepare_task` overwrites every trainable tensor with the global, so nothing of
    an earlier task survives in a persistent worker's model, and `train` starts a
    fresh optimizer unless `model.keep_optimizer_state`.
    """

    private_metrics: dict[str, float] = {}  # example-level DP's (fedhpc.worker.dp_sgd); replaced, never mutated

    def __init__(
        self, task: WorkerTask, env: RankEnv, loaded: LoadedModel | None = None, store: FacilityStore | None = None
    ):
        for key, value in (("global_dir", task.global_dir), ("data", task.data), ("train", task.train)):
            if value is None:
                raise ConfigError(f"mode 'train' needs {key!r}", key=key)
        super().__init__(task, env, loaded, store)

    def setup(self) -> None:
        """Join the job, build base model + adapters, apply the global, read this rank's data shard."""
        init_process_group(self.env, self.device)
        self.fetch_global()
        self.load_base()
        self.prepare_task()

    def fetch_global(self) -> None:
        """With a store: each node's first rank fetches the global, the others wait for it.

        One fetch per node, not per job, so a ``facility_dir`` on node-local disk works too;
        nodes that share it race for one rename, and the losers find the same files in place.
        """
        if self.store is None:
            return
        assert self.task.global_dir is not None
        if self.env.local_rank == 0:
            self.store.fetch(self.task.global_dir)
        barrier()

    def prepare_task(self) -> None:
        """Apply the global and read this rank's data shard.

        `load_seconds` (reported in the update) is the time spent here plus the base
        model's build when this recipe built it, i.e. everything before training.
        """
        task, env, loaded = self.task, self.env, self.loaded
        assert loaded is not None, "load_base first"
        assert task.global_dir is not None and task.data is not None and task.train is not None
        start = time.perf_counter()
        self._progress("loading")
        logger.info(
            "round %d at %s: %s on %d rank(s), device %s", task.round, task.facility, task.mode, env.world_size,
            self.device,
        )
        global_ = ExchangeDir(task.global_dir)
        try:
            # Once per job: a bad global fails rank 0, and torchrun stops the rest (a persistent
            # worker's ranks instead agree to skip the task).
            if env.is_main:
                global_.verify(fingerprint=loaded.fingerprint)
            loaded.apply_global(global_)
            self.based_on_round = global_.manifest.round
        finally:
            global_.close()
        examples = read_examples(task.data)
        self.num_samples = len(examples)
        self.local_steps = epoch_steps(task.train, len(examples), env.world_size)
        shard = [examples[i] for i in shard_indices(len(examples), env.rank, env.world_size, task.train.seed)]
        self.shard = shard  # DP-SGD samples its batches from it (one rank: all the facility's examples)
        multiple = length_multiple(self.device)
        self.batches = batches(shard, loaded.tokenizer, task.data_config, task.train.batch_size, multiple)
        logger.info("%d examples at this facility, %d on rank 0", len(examples), len(shard))
        self.load_seconds = self.built_seconds() + time.perf_counter() - start

    def train(self) -> None:
        settings, loaded = self.task.train, self.loaded
        assert settings is not None and loaded is not None
        set_seed(settings.seed)  # the server derives a job's seed (docs/contracts.md): data order and dropout

        def on_step(step: int, loss: float) -> None:
            logger.info("step %d/%d loss %.4f", step, self.local_steps, loss)
            self._progress("training", step=step, loss=loss)

        self._progress("training")
        keep = self.task.model.keep_optimizer_state
        dtype = training_dtype(self.task.model, self.device)
        if self.task.example_privacy is not None:  # example-level DP: fedhpc.worker.dp_sgd
            from fedhpc.worker.dp_sgd import train_private  # here: only DP jobs load opacus (and scipy)

            self.result, self.private_metrics = train_private(
                self.task, loaded, self.shard, self.device, dtype, self.local_steps,
                lambda step, loss: self._progress("training", step=step, loss=loss), loaded.optimizer if keep else None,
            )  # fmt: skip
            loaded.optimizer = self.result.optimizer if keep else None
            return
        self.result = train_local_steps(
            loaded.model, self.batches, settings, self.device, self.env, dtype, on_step, loss=loaded.loss,
            sharded=loaded.sharded, optimizer=loaded.optimizer if keep else None, steps=self.local_steps,
        )  # fmt: skip
        loaded.optimizer = self.result.optimizer if keep else None

    def save(self) -> None:
        """Publish the update (atomically, manifest last): rank 0 alone, or every FSDP rank its rows."""
        assert self.loaded is not None and self.result is not None, "train first"
        last_loss = self.result.losses[-1] if self.result.losses else None  # none released under example DP
        self._progress("saving", step=self.local_steps, loss=last_loss)
        manifest = self.loaded.write_update(self.task, self._meta(), self.env, self.device)
        if manifest is None:  # the other ranks: rank 0 has the manifest and speaks for the job
            return
        logger.info("wrote %s: %d tensors", self.task.update_dir, len(manifest.tensors))
        if self.store is not None:
            self.store.publish(self.task.update_dir)
        self._progress("done", step=self.local_steps, loss=last_loss)

    def _meta(self) -> ExchangeMeta:
        task, result, loaded = self.task, self.result, self.loaded
        assert result is not None and loaded is not None and task.train is not None
        return ExchangeMeta(
            kind="update",
            round=task.round,
            facility=task.facility,
            based_on_round=self.based_on_round,
            num_samples=self.num_samples,
            local_steps=self.local_steps,
            base_fingerprint=loaded.fingerprint,
            update_form=task.update_form,
            metrics={
                "loss": result.losses,
                "grad_norm": result.grad_norms,
                "lr": result.lrs,
                "grad_accum_steps": task.train.grad_accum_steps,
                "max_grad_norm": task.train.max_grad_norm,
                "tokens": result.tokens,
                "samples_seen": result.samples_seen,
                "train_seconds": result.seconds,
                "load_seconds": self.load_seconds,
                "world_size": self.env.world_size,
                "device": describe(self.device),
                "sharded": loaded.sharded,
                **self.private_metrics,
            },
        )


def epoch_steps(settings: TrainSettings, examples: int, world_size: int) -> int:
    """Optimizer steps for this task: `local_steps`, or ⌈epochs × examples / examples per step⌉ capped by it.

    An optimizer step takes `batch_size` rows × `grad_accum_steps` micro-batches on each of
    `world_size` ranks. With `data.packing` a row holds several examples, so the same count
    of steps passes over the data more than `local_epochs` times.
    """
    if settings.local_epochs is None:
        return settings.local_steps
    per_step = settings.batch_size * settings.grad_accum_steps * world_size
    wanted = max(1, math.ceil(settings.local_epochs * examples / per_step))
    if wanted > settings.local_steps:
        logger.warning(
            "local_epochs %g over %d examples is %d steps of %d examples; the server allows at most "
            "local_steps %d, so this task trains %d", settings.local_epochs, examples, wanted, per_step,
            settings.local_steps, settings.local_steps,
        )  # fmt: skip
        return settings.local_steps
    return wanted
