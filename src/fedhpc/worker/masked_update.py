"""A training job's update under secure aggregation: trained where only the facility reads it, then masked.

The recipe writes its plain update into the facility's keys directory (`private_task`); rank 0 then
publishes the masked delta (`fedhpc.secagg.upload`) in the task's update_dir and deletes the plain one
(`publish_masked`): the staging area, which the server pulls, never holds an unmasked update.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fedhpc.errors import ConfigError
from fedhpc.exchange import ExchangeDir, WorkerTask
from fedhpc.exchange.writer import publish_directory
from fedhpc.secagg.keys import FacilityKeys
from fedhpc.secagg.masking import MaskedRound
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.upload import write_masked_update

logger = logging.getLogger(__name__)


def _part(task: WorkerTask) -> dict:
    if task.secure_aggregation is None:
        raise ConfigError("a masked update needs the task's secure_aggregation part", key="secure_aggregation")
    return task.secure_aggregation


def private_task(task: WorkerTask) -> WorkerTask:
    """The task as the training recipe runs it: its update goes to the facility's own keys directory."""
    plain = Path(_part(task)["keys_dir"]) / "plain" / task.update_dir.name
    return task.model_copy(update={"update_dir": plain})


def publish_masked(task: WorkerTask, private: WorkerTask) -> None:
    """Rank 0, after the recipe saved: mask the plain update's delta into `task.update_dir`, delete the plain one."""
    assert task.global_dir is not None
    part = _part(task)
    masking = MaskedRound(FacilityKeys.load_or_create(task.facility, Path(part["keys_dir"])),
                          RoundRoster.from_json(part["roster"]))
    plain, global_ = ExchangeDir(private.update_dir), ExchangeDir(task.global_dir)
    try:
        manifest = plain.manifest

        def deltas() -> Iterator[tuple[str, np.ndarray]]:
            for name in global_.names():
                values = plain.get(name).to(torch.float32)
                if manifest.update_form != "delta":
                    values = values - global_.get(name).to(torch.float32)
                yield name, values.numpy().astype(np.float64)

        record = {"num_samples": manifest.num_samples, "local_steps": manifest.local_steps,
                  "metrics": manifest.metrics}

        def fill(temp: Path) -> int:
            temp.mkdir(mode=0o755)
            write_masked_update(temp, masking, deltas(), record)
            return sum(path.stat().st_size for path in temp.iterdir())

        def already_there() -> int:
            raise ConfigError(f"{task.update_dir} already exists; an update is published once")

        publish_directory(task.update_dir, fill, already_there)
    finally:
        plain.close()
        global_.close()
        shutil.rmtree(private.update_dir, ignore_errors=True)
    logger.info("published the masked update %s", task.update_dir)
