"""Secure aggregation's short jobs at a facility (docs/secure-aggregation.md): publish the keys, answer the unmask.

They train nothing: load the facility's keys, publish one signed JSON file. `fedhpc worker --task` runs
them before it imports the training stack (`run_secure_task_file`): this module imports neither torch nor
fedhpc.exchange, so the extra message round costs a Python start and the crypto, not a model's imports.
Rank 0 alone answers; other ranks of a multi-rank launcher exit at once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from fedhpc.atomic_files import atomic_write_json
from fedhpc.errors import ConfigError
from fedhpc.secagg.job_task import ADVERT_FILE, REPLY_FILE
from fedhpc.secagg.keys import FacilityKeys
from fedhpc.secagg.roster import RoundRoster
from fedhpc.secagg.unmask_reply import unmask_reply

logger = logging.getLogger(__name__)
SECURE_JOB_MODES = ("secagg-keys", "secagg-unmask")


def run_secure_job(mode: str, facility: str, update_dir: Path, part: dict[str, Any] | None) -> None:
    """A `secagg-keys` or `secagg-unmask` job: one signed JSON file in `update_dir` (made here, written once)."""
    if not isinstance(part, dict) or not isinstance(part.get("keys_dir"), str):
        raise ConfigError(f"mode {mode!r} needs the task's secure_aggregation part with keys_dir",
                          key="secure_aggregation")
    keys = FacilityKeys.load_or_create(facility, Path(part["keys_dir"]))
    if mode == "secagg-keys":
        name, message = ADVERT_FILE, keys.advertisement()
    else:
        name, message = REPLY_FILE, unmask_reply(keys, RoundRoster.from_json(part["roster"]), part["request"],
                                                 part["shares"])
    update_dir.mkdir(parents=True, exist_ok=False)
    atomic_write_json(update_dir / name, message)  # the server pulls it only after the job ended
    logger.info("%s: published %s", mode, update_dir / name)


def run_secure_task_file(task_path: Path) -> bool:
    """Run the task at `task_path` if it is a secure-aggregation job (True), else leave it (False).

    Any failure is logged and exits 1, as `fedhpc.worker.main.run_task` does for a training job.
    """
    try:
        task = json.loads(task_path.read_text(encoding="utf-8"))
        mode = task.get("mode") if isinstance(task, dict) else None
    except (OSError, ValueError):
        return False  # unreadable here: `run_task` reports it
    if mode not in SECURE_JOB_MODES:
        return False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if os.environ.get("RANK", "0") != "0":
        return True
    try:
        run_secure_job(mode, str(task["facility"]), Path(task["update_dir"]), task.get("secure_aggregation"))
    except Exception as e:
        logger.exception("task %s (%s) failed: %s", task_path, mode, e)
        raise SystemExit(1) from e
    return True
