"""What an ended Globus Compute task came to, read from the service's task document.

A result with exit status 0 is DONE and any other exit status FAILED with the stderr tail (124:
the walltime, which the task's command enforces with ``timeout``). The result is read from JSON
only: a result in any other serialization is reported, never decoded. The service's own failures
get their own reasons: a result over the endpoint's size limit, a task lost with its worker or
manager (flagged `lost`, so the launcher may send it again), an endpoint whose configuration
cannot run the task (with what to change).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fedhpc.facility.base import REASON_LINES, JobState, JobStatus, failure_reason
from fedhpc.facility.launchers.compute_command import SNIPPET_LINES, WALLTIME_EXIT

_LOST = re.compile(
    r"WorkerLost|ManagerLost|\b(worker|manager|task)s? (was |were )?lost\b|\bloss of (worker|manager)\b", re.IGNORECASE
)
"""How the service words a task lost with its worker or manager (parsl's WorkerLost, an endpoint restart)."""
_TOO_LARGE = re.compile(r"MaxResultSizeExceeded\((\d+), (\d+)\)|result of (\d+)B exceeded current limit of (\d+)B")
_ENDPOINT_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"disabled by current configuration"),
     "the endpoint restricts serializers: its engine.allowed_serializers must admit "
     "globus_compute_sdk.serialize.DillCode (the shell function) and globus_compute_sdk.serialize.JSONData"),
    (re.compile(r"InvalidResourceSpecification|resource_specification"),
     "launcher.function mpi needs an endpoint whose engine is GlobusMPIEngine; use function: shell otherwise"),
)
"""What to do about endpoint errors whose cause is the endpoint's configuration."""


@dataclass(frozen=True)
class Outcome:
    """An ended task as the service reports it: the job's status, the output tails, and whether it was lost."""

    status: JobStatus
    stdout: str = ""
    stderr: str = ""
    lost: bool = False


def _tail(text: str, lines: int = REASON_LINES) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def decode_result(payload: Any) -> dict[str, Any]:
    """The task's result dict, from JSON only: any other serialization is refused, never decoded."""
    from globus_compute_sdk.serialize import JSONData

    if not isinstance(payload, str) or not payload.startswith(JSONData.identifier):
        header = payload[:2] if isinstance(payload, str) else type(payload).__name__
        raise ValueError(f"the endpoint returned the result in serialization {header!r}, not JSON; fedhpc reads only "
                         "JSON results (the endpoint's globus-compute-endpoint may be too old for result_serializers)")
    result = JSONData().deserialize(payload)
    if not isinstance(result, dict) or not isinstance(result.get("returncode"), int):
        raise ValueError(f"the task's result is not a shell function's result dict: {str(result)[:200]}")
    return result


def task_outcome(doc: dict[str, Any], *, walltime_s: float | None, stderr_path: str | None) -> Outcome:
    """An ended task's outcome, from the service's task document (``GET /v2/tasks/<id>``'s shape)."""
    if "exception" in doc or str(doc.get("status", "")).lower() == "failed":
        text = str(doc.get("exception") or doc.get("reason") or "no detail given")
        too_large = _TOO_LARGE.search(text)
        if too_large:
            size, limit = [int(group) for group in too_large.groups() if group is not None]
            reason = (f"the task's result ({size} B) exceeded the endpoint's result size limit ({limit} B); fedhpc's "
                      f"task returns only the last {SNIPPET_LINES} lines of output (the update moves by the mover), "
                      "so its lines are very long or the limit very low")
            return Outcome(JobStatus(JobState.FAILED, None, reason), stderr=text)
        if _LOST.search(text):
            reason = f"the task was lost with its worker at the endpoint: {_tail(text, 3)}"
            return Outcome(JobStatus(JobState.FAILED, None, reason), stderr=text, lost=True)
        hints = [hint for pattern, hint in _ENDPOINT_HINTS if pattern.search(text)]
        reason = "; ".join([f"the endpoint could not run the task: {_tail(text)}", *hints])
        return Outcome(JobStatus(JobState.FAILED, None, reason), stderr=text)
    if "result" not in doc:
        reason = f"the service reports the task {doc.get('status')} without a result ({doc.get('reason', 'no reason')})"
        return Outcome(JobStatus(JobState.FAILED, None, reason))
    try:
        result = decode_result(doc["result"])
    except ValueError as e:
        return Outcome(JobStatus(JobState.FAILED, None, str(e)))
    returncode, stdout, stderr = result["returncode"], str(result.get("stdout", "")), str(result.get("stderr", ""))
    if returncode == 0:
        return Outcome(JobStatus(JobState.DONE, 0), stdout, stderr)
    if returncode == WALLTIME_EXIT and walltime_s is not None:
        reason = f"walltime exceeded ({walltime_s:g} s): the task's timeout stopped the worker"
    else:
        reason = failure_reason(stderr, returncode)
    if stderr_path:
        reason += f"\n(the whole stderr is at the facility: {stderr_path})"
    return Outcome(JobStatus(JobState.FAILED, returncode, reason), stdout, stderr)
