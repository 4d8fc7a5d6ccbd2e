"""A Globus Compute job's record, ``<log dir>/<job>.compute.json``: all a restarted server needs to find it.

The service knows a task only by its id, so the launcher keeps that id (and the
function's, the walltime's end, how often the task was sent, and the outcome once
it has ended) in a small file beside the job's logs, rewritten atomically at each
change. A resumed server reads it back in `GlobusComputeLauncher.reattach`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhpc.atomic_files import atomic_write_json
from fedhpc.facility.base import JobState, JobStatus

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".compute.json"


@dataclass
class ComputeTask:
    """What a `JobHandle.native` holds for a Globus Compute job."""

    task_id: str
    function_id: str
    record_file: Path
    deadline: float | None  # the job's walltime end, epoch seconds (survives a server restart)
    submissions: int = 1
    final: JobStatus | None = None
    warned: bool = False


def record_path(log_dir: Path, job_name: str) -> Path:
    return Path(log_dir) / f"{job_name}{RECORD_SUFFIX}"


def write_record(job: ComputeTask, endpoint_id: str, job_id: str) -> None:
    """Rewrite the job's record; a failure is only a warning (the job runs on, it just cannot be reattached)."""
    record: dict[str, Any] = {
        "endpoint_id": endpoint_id, "job_id": job_id, "task_id": job.task_id,
        "function_id": job.function_id, "deadline": job.deadline, "submissions": job.submissions,
    }  # fmt: skip
    if job.final is not None:
        record["outcome"] = {"state": job.final.state.value, "returncode": job.final.returncode,
                             "reason": job.final.reason}
    try:
        atomic_write_json(job.record_file, record)
    except OSError as e:
        logger.warning("cannot write %s (a restarted server will not find this job): %s", job.record_file, e)


def read_record(record_file: Path, endpoint_id: str) -> tuple[str | None, ComputeTask] | None:
    """The job id and task a record names, with its recorded outcome if it had ended; None when there is no
    readable record of a task sent to `endpoint_id`."""
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        return None
    if record.get("endpoint_id") != endpoint_id or not record.get("task_id"):
        return None
    job = ComputeTask(str(record["task_id"]), str(record.get("function_id", "")), record_file,
                      record.get("deadline"), int(record.get("submissions", 1)))
    outcome = record.get("outcome")
    if outcome:
        job.final = JobStatus(JobState(outcome["state"]), outcome.get("returncode"), outcome.get("reason", ""))
    return record.get("job_id"), job
