"""The globus-compute launcher: its config, the Compute web API at its HTTP edge, and the task body run for real.

The cloud service cannot be reached from here, so its HTTP API is mocked with `responses` and globus-sdk's
recorded Compute responses (`globus_sdk.testing`); everything above that edge is the real SDK (request
builders, serializers) over a client with a static token. The function the launcher registers is read back
from the registration request the way an endpoint reads it, and run on this machine: an MPIFunction under
the PyPI mpich ``mpiexec`` trains a real round on two ranks, a ShellFunction starts ranks with the
facility's own launcher. What every launcher promises (a failing job's stderr tail, cancel, reattach) is
asked of this one in tests/contracts/test_launcher_contract.py, over the `ComputeApi` edge defined here.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
from globus_compute_sdk import Client, MPIFunction, ShellFunction
from globus_compute_sdk.serialize import ComputeSerializer, DillDataBase64, JSONData
from globus_sdk.testing import RegisteredResponse, load_response

from conftest import QUICKSTART
from fedhpc.config import DataConfig, GlobusComputeLauncherConfig, ModelConfig, load_experiment
from fedhpc.errors import AuthError, ConfigError, SubmitError
from fedhpc.exchange import ExchangeDir, TrainSettings, WorkerTask
from fedhpc.facility.base import JobSpec, JobState, JobStatus
from fedhpc.facility.launchers.globus_compute import GlobusComputeLauncher
from fedhpc.facility.registry import make_launcher

PY = sys.executable
MPIEXEC = str(Path(PY).parent / "mpiexec")
TOKEN = "static-test-token"
BASE = "https://compute.api.globus.org"
ENDPOINT = "4b116d3c-1703-4f8f-9f6f-39921e5864df"  # for configs that never reach the API
RANKS_PROBE = (  # one file per rank: lines two ranks print to one stdout can interleave
    "import os; from fedhpc.worker.distributed import rank_env; r = rank_env(); e = os.environ; "
    "open(os.path.join(e['PROBE_OUT'], f'rank{r.rank}'), 'w').write(' '.join(map(str, "
    "[r.rank, r.world_size, r.local_rank, e['MASTER_ADDR'], e['FEDHPC_DEVICE'], e['X']])))"
)


# ---- the service's HTTP edge ---------------------------------------------------------------------


class ComputeApi:
    """The Compute web API as `responses` serves it: globus-sdk's recorded register/submit/status responses.

    A path given several answers gives them in turn, and its last one from then on.
    """

    def __init__(self, mock: responses.RequestsMock):
        self.mock = mock
        self.meta: dict[str, str] = {}
        for method in (globus_sdk.ComputeClientV3.register_function, globus_sdk.ComputeClientV3.submit,
                       globus_sdk.ComputeClientV2.get_endpoint_status):
            self.meta.update(load_response(method, requests_mock=mock).metadata)
        self.endpoint_id = self.meta["endpoint_id"]
        self.function_id = self.meta["function_id"]
        self.task_id = self.meta["task_id"]
        self.submit_path = f"/v3/endpoints/{self.endpoint_id}/submit"

    def submissions_give(self, *task_ids: str) -> None:
        """From now on submissions are answered with these task ids, one per submission."""
        self.mock.remove(responses.POST, BASE + self.submit_path)
        for task_id in task_ids:
            self._add("POST", self.submit_path, json={
                "request_id": "0b2e4d8c-6f0a-4f53-8d55-6f4b2b1a7d10", "task_group_id": self.meta["task_group_id"],
                "endpoint_id": self.endpoint_id, "tasks": {self.function_id: [task_id]},
            })  # fmt: skip

    def status(self, *docs: dict[str, Any]) -> None:
        """From now on ``POST /v2/batch_status`` answers with these task documents."""
        self.mock.remove(responses.POST, f"{BASE}/v2/batch_status")
        self._add("POST", "/v2/batch_status", json={"response": "batch", "results": {d["task_id"]: d for d in docs}})

    def endpoint(self, status: str) -> None:
        """From now on the endpoint's status is `status` (online or offline)."""
        self.mock.remove(responses.GET, f"{BASE}/v2/endpoints/{self.endpoint_id}/status")
        self._add("GET", f"/v2/endpoints/{self.endpoint_id}/status", json={"status": status, "details": {}})

    def fails(self, method: str, path: str, *errors: tuple[int, str], then_recorded: bool = True) -> None:
        """`path` answers with these errors in turn, then (or not) with its recorded response."""
        recorded = [r for r in self.mock.registered() if r.url == BASE + path and r.method == method]
        self.mock.remove(method, BASE + path)
        for status, message in errors:
            self._add(method, path, status=status, json={"code": "ERROR", "message": message})
        for response in recorded if then_recorded else ():
            self.mock.add(response)

    def _add(self, method: str, path: str, **kwargs: Any) -> None:
        RegisteredResponse(service="compute", method=method, path=path, **kwargs).add(requests_mock=self.mock)

    def bodies(self, path_end: str) -> list[dict[str, Any]]:
        return [json.loads(call.request.body) for call in self.mock.calls if call.request.url.endswith(path_end)]

    def count(self, path_end: str) -> int:
        return sum(call.request.url.endswith(path_end) for call in self.mock.calls)


@pytest.fixture
def api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield ComputeApi(mock)


def static_client() -> Client:
    """A Compute SDK client over a static token: no login, no version check (both would be requests)."""
    return Client(authorizer=globus_sdk.AccessTokenAuthorizer(TOKEN), do_version_check=False)


def config(api: ComputeApi, **overrides: Any) -> GlobusComputeLauncherConfig:
    return GlobusComputeLauncherConfig(**{
        "endpoint_id": api.endpoint_id, "python": PY, "device": "cpu", "status_interval": 0.01, **overrides
    })  # fmt: skip


def launcher(api: ComputeApi, sleeps: list[float] | None = None, **overrides: Any) -> GlobusComputeLauncher:
    return GlobusComputeLauncher(
        config(api, **overrides), client=static_client(), sleep=(sleeps if sleeps is not None else []).append,
        backoff_s=0.5, endpoint_check_s=3600,
    )  # fmt: skip


def spec(tmp_path: Path, name: str = "alpha-r0001-a0", walltime_s: float | None = 600, **changes: Any) -> JobSpec:
    task = str(tmp_path / "staging" / "tasks" / name.split("-", 1)[1] / "task.json")
    settings = {"name": name, "argv": ["/server/venv/bin/python", "-m", "fedhpc", "worker", "--task", task],
                "log_dir": tmp_path / "logs", "walltime_s": walltime_s, "task": task, **changes}
    return JobSpec(**settings)


def registered_function(api: ComputeApi, index: int = -1) -> Any:
    """The function object of a registration request, read back as an endpoint reads it."""
    body = api.bodies("/v3/functions")[index]
    serializer = ComputeSerializer()
    (payload,) = serializer.unpack_buffers(body["function_code"])
    return serializer.deserialize(payload)


def shell_result(returncode: int = 0, stdout: str = "", stderr: str = "") -> str:
    """A ShellFunction's ``return_dict`` result as the endpoint sends it back: JSONData-serialized."""
    return JSONData().serialize({
        "cmd": "...", "stdout": stdout, "stderr": stderr, "returncode": returncode,
        "exception_name": None if returncode == 0 else "subprocess.CalledProcessError",
    })  # fmt: skip


def task_doc(task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """A task document of ``/v2/batch_status``, shaped like globus_sdk.testing's recorded TASK_DOC."""
    doc = {"task_id": task_id, "status": status, "details": {"os": "Linux", "python_version": "3.11.9",
                                                            "globus_compute_sdk_version": "4.19.0"}}
    if status in ("success", "failed"):
        doc["completion_t"] = "1767225600.25"
    return {**doc, **fields}


# ---- config --------------------------------------------------------------------------------------


SHARED_STAGING = "facilities.1.mover={kind: filesystem, staging_dir: /shared/fedhpc/staging}"


def _load_with_launcher(
    launcher: dict | str, data: str = "/scratch/fedhpc/beta.jsonl", mover: str = SHARED_STAGING
) -> Any:
    """`launcher`: a mapping, or YAML text for what JSON cannot say."""
    text = launcher if isinstance(launcher, str) else json.dumps(launcher)
    return load_experiment(QUICKSTART, [f"facilities.1.data={data}", f"facilities.1.launcher={text}", mover])


@pytest.mark.parametrize(
    ("launcher", "key", "fragment"),
    [
        ({"kind": "globus-compute"}, "facilities.1.launcher.endpoint_id", "required key is missing"),
        ({"kind": "globus-compute", "endpoint_id": "polaris"}, "facilities.1.launcher.endpoint_id",
         "must be the endpoint's UUID"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "mpi": {"launcher": "mpiexec"}},
         "facilities.1.launcher.mpi.launcher", "function mpi starts the ranks with the endpoint's own mpi_launcher"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "mpi": {"flavour": "pals"}},
         "facilities.1.launcher.mpi.flavour", "function mpi starts the ranks"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "nodes": 2, "ranks_per_node": 4, "num_ranks": 6},
         "facilities.1.launcher.num_ranks", "is 6, but nodes × ranks_per_node is 8"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "function": "shell", "ranks_per_node": 2},
         "facilities.1.launcher.mpi.launcher", "none starts one process, but nodes × ranks_per_node is 2"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "function": "shell", "mpi": {"extra_args": ["-v"]}},
         "facilities.1.launcher.mpi.extra_args", "no launcher to pass them to"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "env": {"BAD-NAME": "1"}},
         "facilities.1.launcher.env", "cannot be an environment variable name"),
        (f"{{kind: globus-compute, endpoint_id: {ENDPOINT}, user_endpoint_config: {{reservation: 2026-01-05}}}}",
         "facilities.1.launcher.user_endpoint_config", "is sent to the endpoint as JSON"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "python": ""}, "facilities.1.launcher.python",
         "must name the facility's python"),
        ({"kind": "globus-compute", "endpoint_id": ENDPOINT, "function": "bash"}, "facilities.1.launcher.function",
         "'mpi' or 'shell'"),
    ],
)
def test_config_errors_name_the_key(launcher, key, fragment):
    with pytest.raises(ConfigError) as info:
        _load_with_launcher(launcher)
    assert info.value.key == key
    assert f"{key}: " in str(info.value) and fragment in str(info.value)


def test_a_remote_facility_names_its_data_as_an_absolute_path_there():
    with pytest.raises(ConfigError) as info:
        _load_with_launcher({"kind": "globus-compute", "endpoint_id": ENDPOINT}, data="data/beta.jsonl")
    assert info.value.key == "facilities.1.data" and "an absolute path there" in str(info.value)


def test_the_servers_run_directory_is_no_staging_area_for_an_endpoint():
    """The filesystem mover's default staging lies in the run directory, which the endpoint cannot open."""
    with pytest.raises(ConfigError) as info:
        _load_with_launcher({"kind": "globus-compute", "endpoint_id": ENDPOINT}, mover="facilities.1.mover={}")
    assert info.value.key == "facilities.1.mover.kind"
    assert "use mover kind 'globus-transfer' or 'proxystore', or set mover.staging_dir" in str(info.value)


def test_a_good_config_loads_and_counts_its_ranks():
    experiment = _load_with_launcher({
        "kind": "globus-compute", "endpoint_id": ENDPOINT.upper(), "nodes": 2, "ranks_per_node": 4, "num_ranks": 8,
        "python": "/lus/fedhpc/venv/bin/python", "user_endpoint_config": {"account": "chem", "walltime": "01:00:00"},
    })  # fmt: skip
    facility = experiment.facilities[1]
    assert isinstance(facility.launcher, GlobusComputeLauncherConfig) and facility.remote
    assert str(facility.launcher.endpoint_id) == ENDPOINT and facility.launcher.nprocs == 8
    assert str(facility.data) == "/scratch/fedhpc/beta.jsonl"


def test_the_registry_builds_it_without_asking_for_credentials():
    assert isinstance(make_launcher(GlobusComputeLauncherConfig(endpoint_id=ENDPOINT)), GlobusComputeLauncher)


# ---- submission at the API edge ------------------------------------------------------------------


def test_submit_registers_an_mpi_function_and_sends_one_task_with_the_resource_specification(api, tmp_path):
    compute = launcher(api, nodes=2, ranks_per_node=4, worker_init="module load conda\nconda activate fedhpc",
                       env={"NCCL_DEBUG": "WARN"}, mpi={"extra_args": ["--cpu-bind", "depth"]},
                       user_endpoint_config={"account": "chem", "queue": "debug", "walltime": "00:30:00"})
    job = spec(tmp_path, env={"FEDHPC_ATTEMPT": "a0"})
    handle = compute.submit(job)
    assert handle.job_id == f"compute-{api.task_id}"

    (registration,) = api.bodies("/v3/functions")
    assert registration["function_name"] == "fedhpc_worker"
    assert registration["description"] == f"fedhpc worker {job.name}"
    function = registered_function(api)
    assert type(function) is MPIFunction and function.return_dict and function.snippet_lines == 200
    assert function.walltime == 600 + 60  # a grace past the job's walltime: the command's own timeout ends it
    assert (function.stdout, function.stderr) == (str(Path(job.task).parent / f"{job.name}.out"),
                                                  str(Path(job.task).parent / f"{job.name}.err"))
    lines = function.cmd.splitlines()
    assert lines[0].startswith("true") and lines[1:3] == ["module load conda", "conda activate fedhpc"]
    assert "export FEDHPC_DEVICE=cpu" in lines and "export NCCL_DEBUG=WARN" in lines
    assert "export FEDHPC_ATTEMPT=a0" in lines
    assert lines[-1] == f"timeout -k 30 600 $PARSL_MPI_PREFIX {PY} -m fedhpc worker --task {job.task} </dev/null"

    (submission,) = api.bodies(f"/v3/endpoints/{api.endpoint_id}/submit")
    assert submission["resource_specification"] == {
        "num_nodes": 2, "ranks_per_node": 4, "num_ranks": 8, "launcher_options": "--cpu-bind depth"
    }  # fmt: skip
    assert submission["user_endpoint_config"] == {"account": "chem", "queue": "debug", "walltime": "00:30:00"}
    assert submission["result_serializers"] == ["globus_compute_sdk.serialize.concretes.JSONData"]
    (arguments,) = submission["tasks"][api.function_id]
    assert ComputeSerializer.unpack_buffers(arguments) == ["11\n[]", "11\n{}"]  # the call's arguments: JSON
    assert all(call.request.headers["Authorization"] == f"Bearer {TOKEN}" for call in api.mock.calls)

    record = json.loads((tmp_path / "logs" / f"{job.name}.compute.json").read_text())
    assert record["task_id"] == api.task_id and record["endpoint_id"] == api.endpoint_id
    assert record["submissions"] == 1 and record["deadline"] == pytest.approx(time.time() + 600, abs=5)


def test_a_shell_function_starts_the_ranks_with_the_facilities_own_launcher(api, tmp_path):
    compute = launcher(api, function="shell", ranks_per_node=2, mpi={"launcher": "mpiexec"})
    compute.submit(spec(tmp_path, walltime_s=None))
    function = registered_function(api)
    assert type(function) is ShellFunction and function.walltime is None
    assert function.cmd.splitlines()[-1] == f"mpiexec -n 2 -ppn 2 {PY} -m fedhpc worker --task " + str(
        tmp_path / "staging/tasks/r0001-a0/task.json") + " </dev/null"  # fmt: skip
    assert "resource_specification" not in api.bodies("/submit")[0]


def test_transient_errors_are_retried_with_back_off(api, tmp_path):
    api.fails("POST", "/v3/functions", (503, "service unavailable"), (429, "slow down"))
    sleeps: list[float] = []
    handle = launcher(api, sleeps).submit(spec(tmp_path))
    assert handle.job_id == f"compute-{api.task_id}"
    assert api.count("/v3/functions") == 3 and sleeps == [0.5, 1.0]


def test_a_submission_that_keeps_failing_says_why_and_that_the_endpoint_is_offline(api, tmp_path):
    api.fails("POST", api.submit_path, (502, "bad gateway"), then_recorded=False)
    api.endpoint("offline")
    sleeps: list[float] = []
    with pytest.raises(SubmitError) as info:
        launcher(api, sleeps, submit_retries=2).submit(spec(tmp_path))
    assert api.count(api.submit_path) == 3 and sleeps == [0.5, 1.0]
    message = str(info.value)
    assert "did not take job 'alpha-r0001-a0'" in message and "bad gateway" in message
    assert f"endpoint {api.endpoint_id} is offline" in message


def test_retries_stop_at_the_jobs_walltime_and_refusals_are_not_retried(api, tmp_path):
    api.fails("POST", api.submit_path, (503, "maintenance"), then_recorded=False)
    sleeps: list[float] = []
    with pytest.raises(SubmitError, match="maintenance"):
        launcher(api, sleeps).submit(spec(tmp_path, walltime_s=0.2))  # the first back-off would end past it
    assert sleeps == [] and api.count(api.submit_path) == 1

    api.fails("POST", api.submit_path, (403, "you may not run functions on this endpoint"))
    with pytest.raises(SubmitError, match="you may not run functions on this endpoint"):
        launcher(api, sleeps).submit(spec(tmp_path, name="beta-r0001-a0"))
    assert sleeps == [] and api.count(api.submit_path) == 2


def test_refused_credentials_ask_for_a_login(api, tmp_path):
    api.fails("POST", "/v3/functions", (401, "token expired"), then_recorded=False)
    with pytest.raises(AuthError, match="fedhpc login"):
        launcher(api).submit(spec(tmp_path))


# ---- states --------------------------------------------------------------------------------------


def test_task_states_map_onto_job_states_and_the_tails_become_the_jobs_logs(api, tmp_path):
    compute = launcher(api)
    handle = compute.submit(spec(tmp_path))
    seen = []
    for doc in (task_doc(api.task_id, "waiting-for-ep"), task_doc(api.task_id, "waiting-for-nodes"),
                task_doc(api.task_id, "waiting-for-launch"), task_doc(api.task_id, "running"),
                task_doc(api.task_id, "success", result=shell_result(0, "step 2/2 loss 1.93\n", "rank 1 ready\n"))):
        api.status(doc)
        time.sleep(0.011)
        seen.append(compute.poll(handle))
    assert [status.state for status in seen] == [JobState.QUEUED] * 3 + [JobState.RUNNING, JobState.DONE]
    assert seen[0].reason == "Globus Compute: waiting-for-ep" and seen[-1] == JobStatus(JobState.DONE, 0)
    assert (tmp_path / "logs" / "alpha-r0001-a0.out").read_text() == "step 2/2 loss 1.93\n"
    assert (tmp_path / "logs" / "alpha-r0001-a0.err").read_text() == "rank 1 ready\n"
    queries = api.count("/v2/batch_status")
    assert compute.poll(handle) == seen[-1] and api.count("/v2/batch_status") == queries  # the end is kept


def test_one_status_query_per_interval_covers_every_live_job(api, tmp_path):
    other = "7d3f4c55-0a1b-4c8e-9d2f-3e4a5b6c7d8e"
    compute = launcher(api, status_interval=30)
    api.submissions_give(api.task_id, other)
    first, second = compute.submit(spec(tmp_path)), compute.submit(spec(tmp_path, name="beta-r0001-a0"))
    api.status(task_doc(api.task_id, "running"), task_doc(other, "received"))
    for _ in range(20):
        assert compute.poll(first).state is JobState.RUNNING
        assert compute.poll(second).state is JobState.QUEUED
    (query,) = api.bodies("/v2/batch_status")
    assert sorted(query["task_ids"]) == sorted([api.task_id, other])


@pytest.mark.parametrize(
    ("doc", "returncode", "fragments"),
    [
        ({"status": "success", "result": shell_result(124, "", "")}, 124,
         ["walltime exceeded (600 s): the task's timeout stopped the worker"]),
        ({"status": "success", "result": shell_result(3, "", "fedhpc: PARSL_MPI_PREFIX is not set: launcher.function "
                                                          "mpi needs an endpoint whose engine is GlobusMPIEngine\n")},
         3, ["PARSL_MPI_PREFIX is not set"]),
        ({"status": "failed", "exception": "MaxResultSizeExceeded(11534336, 10485760)"}, None,
         ["result (11534336 B) exceeded the endpoint's result size limit (10485760 B)", "the last 200 lines"]),
        ({"status": "success", "result": DillDataBase64().serialize({"returncode": 0})}, None,
         ["in serialization '00', not JSON; fedhpc reads only JSON results"]),
        ({"status": "failed", "exception": "Traceback (most recent call last):\n  ...\n"
                                           "ModuleNotFoundError: No module named 'globus_compute_sdk'\n"}, None,
         ["the endpoint could not run the task", "No module named 'globus_compute_sdk'"]),
        ({"status": "failed", "exception": "globus_compute_sdk.errors.error_types.DeserializationError: "
                                           "Deserialization failed:\n Code serializer DillCode disabled by current "
                                           "configuration."}, None,
         ["DillCode disabled", "engine.allowed_serializers must admit globus_compute_sdk.serialize.DillCode"]),
    ],
)
def test_a_failed_task_says_why(api, tmp_path, doc, returncode, fragments):
    compute = launcher(api)
    handle = compute.submit(spec(tmp_path))
    api.status(task_doc(api.task_id, **doc))
    status = compute.poll(handle)
    assert (status.state, status.returncode) == (JobState.FAILED, returncode)
    for fragment in fragments:
        assert fragment in status.reason


LOST = ("parsl.executors.high_throughput.errors.WorkerLost: Task failure due to loss of worker 3 on host "
        "x3005c0s13b0n0")  # fmt: skip


def test_a_task_lost_with_its_worker_is_sent_again(api, tmp_path):
    again = "5c9e2f1a-8b7d-4e3c-a1f0-2d4b6c8e0a13"
    compute = launcher(api)
    api.submissions_give(api.task_id, again)
    handle = compute.submit(spec(tmp_path))
    api.status(task_doc(api.task_id, "failed", exception=LOST))
    assert compute.poll(handle) == JobStatus(JobState.QUEUED, reason="sent again after the task was lost")
    function = registered_function(api)
    assert function.walltime == pytest.approx(600 + 60, abs=2)  # what is left of the job's walltime
    api.status(task_doc(again, "success", result=shell_result(0)))
    time.sleep(0.011)
    assert compute.poll(handle) == JobStatus(JobState.DONE, 0)
    assert api.count("/v3/functions") == 2 and api.count(api.submit_path) == 2
    assert json.loads((tmp_path / "logs/alpha-r0001-a0.compute.json").read_text())["submissions"] == 2


def test_a_task_lost_more_often_than_the_retries_allow_fails(api, tmp_path):
    ids = [api.task_id, "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "2f1e0d9c-8b7a-4f6e-9d5c-4b3a2f1e0d9c"]
    compute = launcher(api, submit_retries=1)
    api.submissions_give(*ids)
    handle = compute.submit(spec(tmp_path))
    api.status(*[task_doc(task_id, "failed", exception=LOST) for task_id in ids])
    assert compute.poll(handle).state is JobState.QUEUED
    time.sleep(0.011)
    status = compute.poll(handle)
    assert status.state is JobState.FAILED and api.count(api.submit_path) == 2
    assert status.reason.startswith("the task was lost with its worker at the endpoint: ")
    assert "WorkerLost: Task failure due to loss of worker 3" in status.reason
    assert (tmp_path / "logs/alpha-r0001-a0.err").read_text() == LOST


def test_a_job_whose_endpoint_stays_offline_fails_with_that_reason(api, tmp_path):
    compute = GlobusComputeLauncher(config(api), client=static_client(), endpoint_check_s=0, offline_grace_s=0.3)
    handle = compute.submit(spec(tmp_path))
    api.endpoint("offline")
    api.status(task_doc(api.task_id, "waiting-for-ep"))
    assert compute.poll(handle).state is JobState.QUEUED
    time.sleep(0.3)
    status = compute.poll(handle)
    assert status.state is JobState.FAILED
    assert f"endpoint {api.endpoint_id} is offline" in status.reason and "waiting-for-ep" in status.reason


def test_cancel_gives_the_job_up_without_a_request(api, tmp_path):
    compute = launcher(api)
    handle = compute.submit(spec(tmp_path))
    calls = len(api.mock.calls)
    compute.cancel(handle)
    compute.cancel(handle)
    assert compute.poll(handle) == JobStatus(JobState.CANCELLED, None, "cancelled")
    assert len(api.mock.calls) == calls


def test_a_restarted_server_reattaches_to_its_task_and_to_a_recorded_outcome(api, tmp_path):
    job = spec(tmp_path)
    submitted = launcher(api).submit(job)
    second = launcher(api)  # a new server process: knows nothing of the job
    assert second.reattach(spec(tmp_path, name="gamma-r0001-a0"), 0.0) is None
    handle = second.reattach(job, submitted.submitted_at)
    assert handle is not None and handle.job_id == submitted.job_id
    api.status(task_doc(api.task_id, "success", result=shell_result(0, "done\n")))
    assert second.poll(handle) == JobStatus(JobState.DONE, 0)

    third = launcher(api)  # the service need not answer twice: the outcome is in the record
    calls = len(api.mock.calls)
    again = third.reattach(job, submitted.submitted_at)
    assert again is not None and third.poll(again) == JobStatus(JobState.DONE, 0)
    assert len(api.mock.calls) == calls


# ---- the task body, run for real -----------------------------------------------------------------


def run_on_this_machine(function: Any) -> dict[str, Any]:
    """Call the function as the endpoint's worker does (no arguments), its result back through JSON."""
    return JSONData().deserialize(JSONData().serialize(function()))


def test_a_shell_function_starts_mpich_ranks_and_its_timeout_ends_a_job_at_its_walltime(api, tmp_path):
    probe_out = tmp_path / "ranks"
    probe_out.mkdir()
    compute = launcher(api, function="shell", ranks_per_node=2, mpi={"launcher": "mpiexec"}, env={"X": "config"})
    compute.submit(spec(tmp_path, argv=[PY, "-c", RANKS_PROBE], env={"PROBE_OUT": str(probe_out)}))
    result = run_on_this_machine(registered_function(api))
    assert result["returncode"] == 0, result["stderr"]
    host = socket.gethostname()
    assert [(probe_out / f"rank{r}").read_text() for r in (0, 1)] == [f"0 2 0 {host} cpu config",
                                                                     f"1 2 1 {host} cpu config"]

    compute.submit(spec(tmp_path, name="beta-r0001-a0", argv=[PY, "-c", "import time; time.sleep(60)"],
                        walltime_s=1))  # fmt: skip
    started = time.monotonic()
    result = run_on_this_machine(registered_function(api))
    assert result["returncode"] == 124 and time.monotonic() - started < 15


def test_an_mpi_function_without_the_mpi_engine_stops_with_a_clear_message(api, tmp_path, monkeypatch):
    monkeypatch.delenv("PARSL_MPI_PREFIX", raising=False)
    launcher(api).submit(spec(tmp_path, argv=[PY, "-c", "print('never')"]))
    result = run_on_this_machine(registered_function(api))
    assert result["returncode"] == 3 and "needs an endpoint whose engine is GlobusMPIEngine" in result["stderr"]


def test_the_mpi_function_trains_a_round_on_two_mpich_ranks(api, tmp_path, monkeypatch):
    from fedhpc.worker.main import run_task  # the facility's side; the server never imports it

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Repeat.", "input": c, "output": c}) + "\n"
                            for c in ["red", "green", "blue"] * 4))  # fmt: skip
    model = ModelConfig()
    WorkerTask(mode="init", round=0, facility="alpha", update_dir=tmp_path / "global/r0000", model=model,
               device="cpu").write(tmp_path / "init.json")  # fmt: skip
    run_task(tmp_path / "init.json")
    task_path = tmp_path / "staging/tasks/r0001-a0/task.json"
    WorkerTask(
        mode="train", round=1, facility="alpha", global_dir=tmp_path / "global/r0000", device="cpu",
        update_dir=tmp_path / "staging/updates/r0001-a0", progress_file=tmp_path / "staging/progress/r0001-a0.json",
        data=data, model=model, data_config=DataConfig(seq_len=32),
        train=TrainSettings(local_steps=2, lr=1e-2, batch_size=2),
    ).write(task_path)  # fmt: skip

    compute = launcher(api, ranks_per_node=2, env={"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
    job = JobSpec("alpha-r0001-a0", [PY, "-m", "fedhpc", "worker", "--task", str(task_path)], tmp_path / "logs",
                  walltime_s=240, task=str(task_path))  # fmt: skip
    handle = compute.submit(job)
    monkeypatch.setenv("PARSL_MPI_PREFIX", f"{MPIEXEC} -n 2")  # what the MPI engine exports for this task
    monkeypatch.setenv("PARSL_MPI_NODELIST", "127.0.0.1")
    result = run_on_this_machine(registered_function(api))
    assert result["returncode"] == 0, result["stderr"][-3000:]

    update = ExchangeDir(tmp_path / "staging/updates/r0001-a0")
    global_ = ExchangeDir(tmp_path / "global/r0000")
    update.verify(expected_shapes={n: e.shape for n, e in global_.manifest.tensors.items()},
                  fingerprint=global_.manifest.base_fingerprint)  # fmt: skip
    assert (update.manifest.round, update.manifest.metrics["world_size"]) == (1, 2)
    assert (task_path.parent / "alpha-r0001-a0.err").exists()  # the whole output stays at the facility

    api.status(task_doc(api.task_id, "success", result=JSONData().serialize(result)))
    assert compute.poll(handle) == JobStatus(JobState.DONE, 0)
    assert (tmp_path / "logs/alpha-r0001-a0.err").read_text() == result["stderr"]
    assert json.loads((tmp_path / "logs/alpha-r0001-a0.compute.json").read_text())["outcome"]["state"] == "done"
