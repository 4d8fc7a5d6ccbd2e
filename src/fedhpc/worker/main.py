"""`fedhpc worker --task TASK.json`: one facility job, on this rank.

Every rank runs the same command; the launcher sets the ranks, e.g. on CPU:

    GLOO_SOCKET_IFNAME=lo python -m torch.distributed.run --no-python --nproc-per-node 2 \\
        --master-addr 127.0.0.1 --master-port 29500 python -m fedhpc worker --task task.json

The task's mode picks the recipe (`recipe_for`): `mode: init` builds the seeded
base model and adapters and publishes their trainable state as the round-0
global (`fedhpc.worker.init_recipe`, one rank is enough); `mode: train` applies
the staged global, trains `local_steps` steps on this facility's data and
publishes the update (`fedhpc.worker.train_recipe`). The exit status is the
result the server sees: 0 means the output directory is published; anything
else means it is not.

With ``--store JSON`` (a facility on the proxystore mover) the task's files
travel through that store (`fedhpc.worker.object_staging`): every rank fetches the task
(a few KB, read before the process group exists) here, and the recipe the
global and the update.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError
from transformers.utils.logging import disable_progress_bar

from fedhpc.errors import ConfigError, FedhpcError
from fedhpc.exchange import WorkerTask
from fedhpc.lifeline import follow_parent
from fedhpc.worker.distributed import RankEnv, rank_env
from fedhpc.worker.init_recipe import InitRecipe
from fedhpc.worker.initial_global import streams_from_checkpoint, write_initial_global
from fedhpc.worker.loaded import LoadedModel
from fedhpc.worker.recipe import Recipe
from fedhpc.worker.masked_update import private_task, publish_masked
from fedhpc.worker.secure_jobs import SECURE_JOB_MODES, run_secure_job
from fedhpc.worker.object_staging import FacilityStore
from fedhpc.worker.train_recipe import TrainRecipe

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def run_task(task_path: Path | str, store: str | None = None) -> None:
    """Run one task on this rank; on any failure log it and exit with status 1.

    `store`: the ``--store`` JSON of a proxystore mover, through which the task's files travel.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    follow_parent()  # a rank started by a local launcher dies with its torchrun
    env = RankEnv()
    try:
        env = rank_env()
        # Rank 0 speaks for the job; the others only report their own failures.
        logging.getLogger("fedhpc").setLevel(logging.INFO if env.is_main else logging.ERROR)
        execute_task(Path(task_path), env, FacilityStore.from_json(store) if store is not None else None)
    except FedhpcError as e:  # an expected failure: its message says what to fix
        logger.error("rank %d of %d: task %s failed: %s", env.rank, env.world_size, task_path, e)
        raise SystemExit(1) from e
    except Exception as e:
        logger.exception("rank %d of %d: task %s failed: %s", env.rank, env.world_size, task_path, e)
        raise SystemExit(1) from e


def execute_task(task_path: Path, env: RankEnv, store: FacilityStore | None = None) -> None:
    """The recipe, top to bottom; raises on failure (`run_task` turns that into the exit status).

    The simulated launcher calls this in the server's process, where exiting or
    reconfiguring logging would hit the server itself.
    """
    disable_progress_bar()  # per-tensor loading bars from every rank would drown the job log
    if store is not None:  # every rank: the task names the device, which the process group needs first
        store.fetch(task_path.parent)
    task = read_task(task_path)
    if task.mode in SECURE_JOB_MODES:  # a short secure-aggregation job: keys and one JSON file, no model
        if env.is_main:  # one answer per facility, whatever its rank count
            run_secure_job(task.mode, task.facility, task.update_dir, task.secure_aggregation)
        return
    if task.mode == "init" and streams_from_checkpoint(task.model):
        manifest = write_initial_global(task)
        logger.info("wrote %s: %d tensors streamed from the checkpoint", task.update_dir, len(manifest.tensors))
        return  # the server runs init itself, never through a store
    masked = task.mode == "train" and task.secure_aggregation is not None
    if masked and store is not None:
        raise ConfigError("secure aggregation does not travel through a proxystore mover yet", key="secure_aggregation")
    trained = private_task(task) if masked else task  # masked: the plain update stays with the facility
    recipe = recipe_for(trained, env, store=store)
    recipe.setup()
    recipe.train()
    recipe.save()
    if masked and env.is_main:
        publish_masked(task, trained)
    recipe.cleanup()


def read_task(path: Path) -> WorkerTask:
    try:
        return WorkerTask.read(path)
    except OSError as e:
        raise ConfigError(f"cannot read the task file: {e.strerror}", file=str(path)) from e
    except ValidationError as e:
        raise ConfigError(f"not a valid worker task: {e}", file=str(path)) from e


def recipe_for(
    task: WorkerTask, env: RankEnv, loaded: LoadedModel | None = None, store: FacilityStore | None = None
) -> Recipe:
    """The recipe of the task's mode; `loaded`: a base model already built from `task.model`."""
    if task.mode == "init":
        return InitRecipe(task, env, loaded, store)
    return TrainRecipe(task, env, loaded, store)
