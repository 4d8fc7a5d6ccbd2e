"""The facility's side of secure aggregation (docs/secure-aggregation.md): mask the update, answer the server.

A training job with `secure_aggregation` writes its plain update where only the facility reads it (under
its keys directory), then rank 0 publishes the masked update in its place (`publish_masked`) and deletes
the plain one: the staging area, which the server pulls, never holds an unmasked update. The two short
jobs (`secagg-keys`, `secagg-unmask`) train nothing: they load the facility's keys and publish one
signed JSON file.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedhpc.errors import ConfigError
from fedhpc.exchange import ExchangeDir, WorkerTask
from fedhpc.exchange.writer import publish_directory
from fedhpc.secagg.job_task import ADVERT_FILE, REPLY_FILE
from fedhpc.secagg.keys import FacilityKeys
from fedhpc.secagg.masking import MaskedRound
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.unmask_reply import unmask_reply
from fedhpc.secagg.upload import write_masked_update

logger = logging.getLogger(__name__)
SECURE_JOB_MODES = ("secagg-keys", "secagg-unmask")


def _part(task: WorkerTask) -> dict[str, Any]:
    if task.secure_aggregation is None:
        raise ConfigError(f"mode {task.mode!r} needs the task's secure_aggregation part", key="secure_aggregation")
    return task.secure_aggregation


def _keys(task: WorkerTask) -> FacilityKeys:
    return FacilityKeys.load_or_create(task.facility, Path(_part(task)["keys_dir"]))


def run_secure_job(task: WorkerTask) -> None:
    """A `secagg-keys` or `secagg-unmask` job: one signed JSON file published into the task's update_dir."""
    keys = _keys(task)
    if task.mode == "secagg-keys":
        name, message = ADVERT_FILE, keys.advertisement()
    else:
        part = _part(task)
        roster = RoundRoster.from_json(part["roster"])
        name, message = REPLY_FILE, unmask_reply(keys, roster, part["request"], part["shares"])
    _publish(task.update_dir, lambda temp: _write_json(temp / name, message))
    logger.info("%s: published %s", task.mode, task.update_dir / name)


def private_task(task: WorkerTask) -> WorkerTask:
    """The task as the training recipe runs it: its update goes to the facility's own keys directory."""
    plain = Path(_part(task)["keys_dir"]) / "plain" / task.update_dir.name
    shutil.rmtree(plain, ignore_errors=True)  # a killed earlier try of the same job
    return task.model_copy(update={"update_dir": plain})


def publish_masked(task: WorkerTask, private: WorkerTask) -> None:
    """Rank 0, after the recipe saved: mask the plain update's delta into `task.update_dir`, delete the plain one."""
    assert task.global_dir is not None
    roster = RoundRoster.from_json(_part(task)["roster"])
    masking = MaskedRound(_keys(task), roster)
    plain, global_ = ExchangeDir(private.update_dir), ExchangeDir(task.global_dir)
    try:
        manifest = plain.manifest
        is_delta = manifest.update_form == "delta"

        def deltas():
            for name in global_.names():
                values = plain.get(name).to(torch.float32)
                if not is_delta:
                    values = values - global_.get(name).to(torch.float32)
                yield name, values.numpy().astype(np.float64)

        record = {"num_samples": manifest.num_samples, "local_steps": manifest.local_steps,
                  "metrics": manifest.metrics}
        _publish(task.update_dir, lambda temp: write_masked_update(temp, masking, deltas(), record))
    finally:
        plain.close()
        global_.close()
        shutil.rmtree(private.update_dir, ignore_errors=True)
    logger.info("published the masked update %s", task.update_dir)


def _publish(destination: Path, write: Any) -> None:
    def fill(temp: Path) -> int:
        temp.mkdir(mode=0o755)
        write(temp)
        return sum(path.stat().st_size for path in temp.iterdir())

    def already_there() -> int:
        raise ConfigError(f"{destination} already exists; this job's output is written once")

    publish_directory(destination, fill, already_there)


def _write_json(path: Path, message: dict[str, Any]) -> None:
    path.write_text(json.dumps(message))
