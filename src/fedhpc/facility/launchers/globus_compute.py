"""Run a facility's job as one Globus Compute task on the facility's endpoint.

Each job is one `ShellFunction` or `MPIFunction` (`compute_command.worker_function`: the worker's
command line, its environment and the rank launcher) sent to ``launcher.endpoint_id`` with the
task's MPI ``resource_specification`` and the experiment's ``user_endpoint_config`` (account,
queue, walltime: whatever the endpoint's template takes). The task returns a small JSON dict
(exit status, the last lines of stdout and stderr); the update itself moves by the mover.

Why the web API and not the SDK's ``Executor``: the Executor hands out futures whose results
arrive over an AMQP stream tied to this process. fedhpc polls its launchers, and a restarted
server must find its jobs again from files (`reattach`), which a stream cannot give; the
Executor also lets its submitting thread die on the first failed request. So the launcher makes
the same two calls the Executor makes -- register the function, submit a batch -- through the
SDK's own request builders (`FunctionRegistrationData`, `Batch`), and then asks for task states
by id over REST (``POST /v2/batch_status``, every live job of the launcher in one request, at
most every ``launcher.status_interval`` seconds). The task id is kept in
``<log dir>/<job>.compute.json`` (`compute_record`), so `reattach` needs nothing else.

What crosses: the function travels in the SDK's code serialization, the one endpoints read (the
server only writes it); the call's arguments go as JSON; the endpoint is asked to return the
result as JSON (``result_serializers``), and the server reads nothing else (`compute_result`).

States: the service's waiting states (received, waiting-for-ep, -nodes, -launch) are QUEUED,
running is RUNNING; an ended task's outcome is read from its task document by
`compute_result.task_outcome`. The result's stdout and stderr tails are written to
``<log dir>/<job>.out`` and ``.err``, like every launcher's logs; the whole output stays at the
facility beside the job's task.json. A task lost with its worker or manager is sent again (at
most ``submit_retries`` times, while the job's walltime lasts); an endpoint that has been offline
for `OFFLINE_GRACE_S` seconds fails its jobs (its status is checked every `ENDPOINT_CHECK_S`
while jobs are live, and when a submission fails).

Transient errors of the service (HTTP 5xx and 429, lost connections) are retried with
exponential back-off, ``submit_retries`` times and never past the job's walltime. fedhpc does
the retrying, so the web clients it builds retry on their own only a dropped connection or an
expired token, once. A failed status query is a missed look, not a failed job; refused
credentials raise `AuthError` (run ``fedhpc login``, then resume: the jobs are found again).

Cancelling: Globus Compute cannot stop a task once it is sent. `cancel` gives the job up; a
task already running ends at the job's walltime, which its command enforces with ``timeout``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedhpc.config import GlobusComputeLauncherConfig
from fedhpc.errors import AuthError, SubmitError
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus, Launcher
from fedhpc.facility.launchers.compute_command import output_paths, resource_specification, worker_function
from fedhpc.facility.launchers.compute_record import ComputeTask, read_record, record_path, write_record
from fedhpc.facility.launchers.compute_result import Outcome, task_outcome

logger = logging.getLogger(__name__)

BACKOFF_S = 2.0
"""First wait before a transient error is retried; it doubles up to `MAX_BACKOFF_S`."""
MAX_BACKOFF_S = 60.0
ENDPOINT_CHECK_S = 60.0
"""The endpoint's status is asked at most this often while the launcher has live jobs."""
OFFLINE_GRACE_S = 300.0
"""A job whose endpoint has been offline this long fails (an endpoint restart takes well under this)."""
MIN_RESUBMIT_S = 60.0
"""A lost task is sent again only while at least this much of the job's walltime is left."""
TASK_STATES: dict[str, JobState] = {
    "received": JobState.QUEUED,
    "waiting-for-ep": JobState.QUEUED,
    "waiting-for-nodes": JobState.QUEUED,
    "waiting-for-launch": JobState.QUEUED,
    "running": JobState.RUNNING,
    "execution-start": JobState.RUNNING,
}
"""The service's states (globus_compute_common TaskState) of a task that has not ended."""
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
T = TypeVar("T")


def _transient(error: Exception) -> bool:
    import globus_sdk

    if isinstance(error, globus_sdk.NetworkError):
        return True
    return isinstance(error, globus_sdk.GlobusAPIError) and (error.http_status >= 500 or error.http_status == 429)


def _retry_after(error: Exception) -> float | None:
    try:
        return float(error.headers["Retry-After"])  # type: ignore[attr-defined]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


class GlobusComputeLauncher(Launcher):
    """`Launcher` for one Globus Compute task per job; see the module docstring.

    `client`: a ``globus_compute_sdk.Client`` whose credentials the launcher uses; by default
    `fedhpc.globus.auth.compute_client()`, made at the first request (it raises `AuthError`
    rather than prompting). Tests inject one built over a static token.
    """

    def __init__(
        self,
        config: GlobusComputeLauncherConfig,
        *,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_s: float = BACKOFF_S,
        endpoint_check_s: float = ENDPOINT_CHECK_S,
        offline_grace_s: float = OFFLINE_GRACE_S,
    ):
        self.config = config
        self.endpoint_id = str(config.endpoint_id)
        self._client = client
        self._web: tuple[Any, Any] | None = None
        self._sleep = sleep
        self.backoff_s = backoff_s
        self.endpoint_check_s = endpoint_check_s
        self.offline_grace_s = offline_grace_s
        self._lock = threading.Lock()
        self._live: dict[str, ComputeTask] = {}  # task id -> job, for every job not yet ended
        self._docs: dict[str, dict[str, Any]] = {}  # task id -> the service's last document
        self._queried_at = -math.inf
        self._endpoint_checked_at = -math.inf
        self._offline_since: float | None = None  # monotonic time the endpoint was first seen offline

    # --- the web API -----------------------------------------------------------------------------

    def _clients(self) -> tuple[Any, Any]:
        """Compute web clients (v2 for states, v3 for submission) over the SDK client's credentials."""
        if self._web is None:
            import globus_sdk
            from globus_sdk.transport import RetryConfig

            if self._client is None:
                from fedhpc.globus.auth import compute_client

                self._client = compute_client()
            client = self._client
            credentials = {"app": client.app} if client.app is not None else {"authorizer": client.authorizer}

            def one_attempt() -> RetryConfig:  # fedhpc retries; the transport only refreshes a token once
                return RetryConfig(max_retries=1, retry_after_status_codes=(), transient_error_status_codes=())

            base = client.web_service_address
            self._web = (
                globus_sdk.ComputeClientV2(base_url=base, retry_config=one_attempt(), **credentials),
                globus_sdk.ComputeClientV3(base_url=base, retry_config=one_attempt(), **credentials),
            )
        return self._web

    def _call(self, what: str, deadline: float | None, request: Callable[[], T]) -> T:
        """`request()`, retried with back-off on transient errors while retries and the deadline allow."""
        import globus_sdk

        delay, retries = self.backoff_s, 0
        while True:
            try:
                return request()
            except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as e:
                if isinstance(e, globus_sdk.GlobusAPIError) and e.http_status == 401:
                    raise AuthError(f"Globus Compute refused the credentials while {what} ({e.message}); "
                                    "run `fedhpc login`, then run the experiment again (it resumes)") from e
                wait = _retry_after(e) or delay
                late = deadline is not None and time.time() + wait > deadline
                if not _transient(e) or retries == self.config.submit_retries or late:
                    raise
                retries += 1
                logger.warning("%s failed (%s); retry %d of %d in %.0f s", what, e, retries,
                               self.config.submit_retries, wait)
                self._sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF_S)

    def _endpoint_offline(self) -> bool | None:
        """Whether the service says the endpoint is offline; None when it could not be asked."""
        import globus_sdk

        v2, _ = self._clients()
        try:
            status = v2.get_endpoint_status(self.endpoint_id)["status"]
        except (globus_sdk.GlobusError, KeyError, TypeError) as e:
            logger.warning("cannot read the status of endpoint %s: %s", self.endpoint_id, e)
            return None
        return status != "online"

    # --- submitting ------------------------------------------------------------------------------

    def submit(self, job: JobSpec) -> JobHandle:
        if not _JOB_NAME.match(job.name):
            raise SubmitError(f"job name {job.name!r} must be a plain file name (it names the job's files)")
        record_file = record_path(job.log_dir, job.name)
        try:
            Path(job.log_dir).mkdir(parents=True, exist_ok=True)
            for stale in (record_file, Path(job.log_dir) / f"{job.name}.out", Path(job.log_dir) / f"{job.name}.err"):
                stale.unlink(missing_ok=True)  # an earlier submission of the same name
        except OSError as e:
            raise SubmitError(f"cannot prepare {job.log_dir} for job {job.name!r}: {e}") from e
        submitted_at = time.time()
        deadline = None if job.walltime_s is None else submitted_at + job.walltime_s
        with self._lock:
            task_id, function_id = self._send(job, deadline, job.walltime_s)
            native = ComputeTask(task_id, function_id, record_file, deadline)
            self._live[task_id] = native
        handle = JobHandle(f"compute-{task_id}", job, submitted_at, native)
        self._write_record(handle)
        logger.info("submitted %s as Globus Compute task %s on endpoint %s", job.name, task_id, self.endpoint_id)
        return handle

    def _send(self, job: JobSpec, deadline: float | None, walltime_s: float | None) -> tuple[str, str]:
        """Register the job's function and submit one task of it, to run at most `walltime_s`; (task id, function id).

        `deadline` (epoch seconds) bounds the retries of transient errors.
        """
        import globus_sdk
        from globus_compute_sdk.sdk.batch import Batch, create_user_runtime
        from globus_compute_sdk.sdk.client import FunctionRegistrationData
        from globus_compute_sdk.serialize import ComputeSerializer, DillCode, JSONData
        from globus_compute_sdk.serialize.facade import validate_strategylike

        serializer = ComputeSerializer(strategy_code=DillCode(), strategy_data=JSONData())
        function = worker_function(self.config, job, walltime_s)
        _, v3 = self._clients()
        registration = FunctionRegistrationData(
            function=function, serializer=serializer, description=f"fedhpc worker {job.name}"
        ).to_dict()
        try:
            function_id = self._call("registering the worker function", deadline,
                                     lambda: v3.register_function(registration)["function_uuid"])
            batch = Batch(
                None, resource_specification(self.config), self.config.user_endpoint_config or None,
                serializer=serializer, user_runtime=create_user_runtime(),
                result_serializers=[validate_strategylike(JSONData).import_path],
            )  # fmt: skip
            batch.add(function_id)
            submitted = self._call("submitting the task", deadline,
                                   lambda: v3.submit(self.endpoint_id, batch.prepare()))
            return str(submitted["tasks"][function_id][0]), str(function_id)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError, KeyError, IndexError, TypeError) as e:
            said = e.message if isinstance(e, globus_sdk.GlobusAPIError) and e.message else str(e)
            message = f"Globus Compute did not take job {job.name!r} for endpoint {self.endpoint_id}: {said}"
            offline = self._endpoint_offline()
            if offline:
                message += (f"; endpoint {self.endpoint_id} is offline: start it at the facility "
                            "(globus-compute-endpoint start <name>)")
            raise SubmitError(message) from e

    # --- watching --------------------------------------------------------------------------------

    def poll(self, handle: JobHandle) -> JobStatus:
        job = handle.native if isinstance(handle.native, ComputeTask) else None
        if job is None:
            return JobStatus(JobState.UNKNOWN, reason=f"{handle.job_id} was not submitted by this launcher")
        with self._lock:
            if job.final is not None:
                return job.final
            self._refresh()
            doc = self._docs.get(job.task_id)
            if doc is None:
                return self._waiting(handle, job, "submitted", JobState.QUEUED)
            state = str(doc.get("status", "unknown")).lower()
            if state in ("success", "failed") or "result" in doc or "exception" in doc:
                return self._ended(handle, job, doc)
            live = TASK_STATES.get(state)
            if live is None and not job.warned:
                job.warned = True
                logger.warning("Globus Compute reports an unknown state %r for %s", state, handle.job_id)
            return self._waiting(handle, job, state, live or JobState.UNKNOWN)

    def _refresh(self) -> None:
        """Ask for every live task at once, and the endpoint's status, at most as often as configured."""
        import globus_sdk

        now = time.monotonic()
        if now - self._queried_at >= self.config.status_interval and self._live:
            self._queried_at = now
            v2, _ = self._clients()
            try:
                results = v2.get_task_batch(list(self._live))["results"]
                self._docs.update({task_id: doc for task_id, doc in results.items() if isinstance(doc, dict)})
            except globus_sdk.GlobusAPIError as e:
                if e.http_status == 401:
                    raise AuthError(f"Globus Compute refused the credentials ({e.message}); run `fedhpc login`, then "
                                    "run the experiment again (it resumes and finds its tasks)") from e
                logger.warning("status query of Globus Compute failed: %s", e)
            except (globus_sdk.NetworkError, KeyError, TypeError) as e:
                logger.warning("status query of Globus Compute failed: %s", e)
        if now - self._endpoint_checked_at >= self.endpoint_check_s and self._live:
            self._endpoint_checked_at = now
            offline = self._endpoint_offline()
            if offline and self._offline_since is None:
                self._offline_since = now
                logger.warning("endpoint %s is offline; its tasks wait in the service (jobs fail after %g s)",
                               self.endpoint_id, self.offline_grace_s)
            elif offline is False:
                self._offline_since = None

    def _waiting(self, handle: JobHandle, job: ComputeTask, state: str, live: JobState) -> JobStatus:
        """A task that has not ended, unless its endpoint has been offline too long."""
        if self._offline_since is not None and time.monotonic() - self._offline_since >= self.offline_grace_s:
            seconds = time.monotonic() - self._offline_since
            return self._finish(handle, job, Outcome(JobStatus(JobState.FAILED, None, (
                f"endpoint {self.endpoint_id} is offline (for {seconds:.0f} s, the task {state}); start it at the "
                "facility (globus-compute-endpoint start <name>); the service keeps the task and runs it if the "
                "endpoint returns, but this job is given up"))))  # fmt: skip
        return JobStatus(live, reason=f"Globus Compute: {state}")

    def _ended(self, handle: JobHandle, job: ComputeTask, doc: dict[str, Any]) -> JobStatus:
        _, stderr_path = output_paths(handle.spec)
        outcome = task_outcome(doc, walltime_s=handle.spec.walltime_s, stderr_path=stderr_path)
        if outcome.lost and self._send_again(handle, job, outcome.status.reason):
            return JobStatus(JobState.QUEUED, reason="sent again after the task was lost")
        return self._finish(handle, job, outcome)

    def _send_again(self, handle: JobHandle, job: ComputeTask, why: str) -> bool:
        """Resubmit a lost task while resubmissions and walltime are left; whether it was sent."""
        left = None if job.deadline is None else job.deadline - time.time()
        if job.submissions > self.config.submit_retries or (left is not None and left < MIN_RESUBMIT_S):
            return False
        try:
            task_id, function_id = self._send(handle.spec, job.deadline, None if left is None else math.floor(left))
        except SubmitError as e:
            logger.warning("%s: could not send the lost task again: %s", handle.spec.name, e)
            return False
        logger.warning("%s: Globus Compute task %s was lost (%s); sent again as task %s (%d of %d)", handle.spec.name,
                       job.task_id, why, task_id, job.submissions, self.config.submit_retries)
        self._live.pop(job.task_id, None)
        self._docs.pop(job.task_id, None)
        job.task_id, job.function_id = task_id, function_id
        job.submissions += 1
        self._live[task_id] = job
        self._write_record(handle)
        return True

    def _finish(self, handle: JobHandle, job: ComputeTask, outcome: Outcome) -> JobStatus:
        """Make `outcome` the job's last word: its output tails into <job>.out/.err, its status into the record."""
        job.final = outcome.status
        self._live.pop(job.task_id, None)
        self._docs.pop(job.task_id, None)
        log_dir = Path(handle.spec.log_dir)
        for suffix, text in ((".out", outcome.stdout), (".err", outcome.stderr)):
            try:
                if text:
                    (log_dir / f"{handle.spec.name}{suffix}").write_text(text)
            except OSError as e:
                logger.warning("cannot write the %s log of %s: %s", suffix, handle.spec.name, e)
        self._write_record(handle)
        return outcome.status

    def cancel(self, handle: JobHandle) -> None:
        """Give the job up (idempotent; it reports CANCELLED after, unless it had already ended).

        Globus Compute cannot stop a task once sent: one still waiting runs when the endpoint takes
        it, and one running runs on until it ends or reaches the job's walltime (its ``timeout``).
        Its update is never collected: it goes to a directory unique to this attempt.
        """
        job = handle.native if isinstance(handle.native, ComputeTask) else None
        if job is None:
            logger.warning("cannot cancel %s: not submitted by this launcher", handle.job_id)
            return
        with self._lock:
            if job.final is not None:
                return
            logger.warning("%s: Globus Compute cannot stop task %s; it runs on at endpoint %s until it ends or its "
                           "walltime passes", handle.spec.name, job.task_id, self.endpoint_id)
            self._finish(handle, job, Outcome(JobStatus(JobState.CANCELLED, reason="cancelled")))

    # --- restarts --------------------------------------------------------------------------------

    def _write_record(self, handle: JobHandle) -> None:
        job = handle.native
        assert isinstance(job, ComputeTask)
        write_record(job, self.endpoint_id, handle.job_id)

    def reattach(self, spec: JobSpec, submitted_at: float) -> JobHandle | None:
        """The handle of `spec`'s task submitted by an earlier server process, from its record; None if none.

        A task that had ended keeps the outcome recorded then (the service need not hold its result twice).
        """
        found = read_record(record_path(spec.log_dir, spec.name), self.endpoint_id)
        if found is None:
            return None
        job_id, job = found
        if job.final is None:
            with self._lock:
                self._live[job.task_id] = job
                self._queried_at = -math.inf
        return JobHandle(str(job_id or f"compute-{job.task_id}"), spec, submitted_at, job)
