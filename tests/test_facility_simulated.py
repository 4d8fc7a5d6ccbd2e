"""The simulated launcher: a real in-process worker, reported QUEUED/RUNNING/DONE at drawn virtual times."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import yaml
from test_worker_run import MODEL, init_global, train_task, write_dataset

from fedhpc.config import FacilityConfig, SimulatedLauncherConfig, load_experiment
from fedhpc.errors import ConfigError, SubmitError
from fedhpc.exchange import ExchangeDir, TrainSettings, WorkerTask
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus
from fedhpc.facility.registry import make_launcher
from fedhpc.clock import VirtualClock
from fedhpc.simulate.launcher import SimulatedLauncher, plan_job, simulated_launchers

START = 1_000_000.0
STEPS = 2
CONFIG = SimulatedLauncherConfig(seconds_per_step=2.0, queue_wait={"uniform": [0, 1200]}, startup=20)
RUN_SECONDS = 20 + STEPS * 2.0  # startup + local_steps × seconds_per_step: constants here


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("simulated")
    write_dataset(root / "data.jsonl")
    init_global(root / "global", MODEL)
    return root


def worker_spec(
    workspace: Path, name: str, walltime_s: float | None = None, task_dir: str | None = None, **changes: object
) -> JobSpec:
    """A `mode: train` job as the orchestrator submits it: ``python -m fedhpc worker --task T``.

    The task, its update and progress files are in ``workspace/<task_dir>`` (default: the job's name).
    """
    settings = TrainSettings(local_steps=STEPS, lr=1e-2, batch_size=2)
    task = train_task(workspace, workspace / "global" / "r0000", task_dir or name, train=settings, **changes)
    argv = [sys.executable, "-m", "fedhpc", "worker", "--task", str(task)]
    return JobSpec(name, argv, workspace / "logs", walltime_s=walltime_s)


def update_dir(workspace: Path, name: str) -> Path:
    return workspace / name / "update"


def states_until_finished(launcher: SimulatedLauncher, handle: JobHandle) -> list[tuple[float, JobStatus]]:
    """(virtual time, status) at submission and after each jump of the clock, until the job has finished."""
    seen = [(launcher.clock.now(), launcher.poll(handle))]
    while not seen[-1][1].state.finished:
        launcher.clock.sleep_until(None)
        seen.append((launcher.clock.now(), launcher.poll(handle)))
    return seen


def test_a_job_is_queued_running_and_done_at_its_drawn_times(workspace: Path) -> None:
    launcher = SimulatedLauncher(CONFIG, VirtualClock(START))
    spec = worker_spec(workspace, "alpha-r0001")
    handle = launcher.submit(spec)
    assert (handle.job_id, handle.submitted_at, handle.spec) == ("sim-alpha-r0001", START, spec)

    queue_wait = plan_job(CONFIG, "alpha-r0001", STEPS, None).queue_wait
    assert 0 <= queue_wait <= 1200
    assert states_until_finished(launcher, handle) == [
        (START, JobStatus(JobState.QUEUED)),
        (START + queue_wait, JobStatus(JobState.RUNNING)),
        (START + queue_wait + RUN_SECONDS, JobStatus(JobState.DONE, 0)),
    ]
    # What the orchestrator pulls is what a local job writes.
    global_ = ExchangeDir(workspace / "global" / "r0000")
    update = ExchangeDir(update_dir(workspace, "alpha-r0001"))
    update.verify(expected_shapes={n: e.shape for n, e in global_.manifest.tensors.items()},
                  fingerprint=global_.manifest.base_fingerprint)  # fmt: skip
    assert (update.manifest.kind, update.manifest.round, update.manifest.local_steps) == ("update", 1, STEPS)
    assert update.manifest.metrics["world_size"] == 1
    err = (workspace / "logs" / "alpha-r0001.err").read_text()
    assert f"step {STEPS}/{STEPS} loss" in err
    worker_log = logging.getLogger("fedhpc.worker")  # the job's log went to its file, not the server's handlers
    assert (worker_log.handlers, worker_log.propagate) == ([], True)
    assert (workspace / "logs" / "alpha-r0001.out").exists()


def test_the_same_job_name_gets_the_same_durations_in_another_launcher(workspace: Path) -> None:
    timelines = []
    for attempt in ("first", "second"):  # each writes its own update, as the orchestrator's attempts do
        launcher = SimulatedLauncher(CONFIG, VirtualClock(START))
        handle = launcher.submit(worker_spec(workspace, "beta-r0002", task_dir=f"beta-{attempt}"))
        timelines.append(states_until_finished(launcher, handle))
    assert timelines[0] == timelines[1]
    assert [status.state for _, status in timelines[0]] == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]


def test_draws_depend_on_the_job_name_and_seed_not_on_call_order() -> None:
    config = SimulatedLauncherConfig(
        queue_wait={"lognormal": {"median": 300, "sigma": 1.0}}, startup={"exponential": 30},
        seconds_per_step={"uniform": [1, 3]},
    )  # fmt: skip
    names = [f"alpha-r{round:04d}" for round in range(1, 21)]
    forward = [plan_job(config, name, 10, None) for name in names]
    backward = [plan_job(config, name, 10, None) for name in reversed(names)][::-1]
    assert forward == backward
    assert len({plan.queue_wait for plan in forward}) == len(names)
    assert len({plan.run_seconds for plan in forward}) == len(names)
    assert all(plan.queue_wait > 0 and plan.run_seconds > 10 for plan in forward)
    reseeded = config.model_copy(update={"seed": 1})
    assert plan_job(reseeded, names[0], 10, None) != forward[0]
    median_only = SimulatedLauncherConfig(queue_wait={"lognormal": {"median": 300, "sigma": 0}})
    assert plan_job(median_only, names[0], 10, None).queue_wait == pytest.approx(300)


def test_a_job_longer_than_its_walltime_fails_at_the_walltime(workspace: Path) -> None:
    launcher = SimulatedLauncher(CONFIG, VirtualClock(START))
    handle = launcher.submit(worker_spec(workspace, "gamma-r0001", walltime_s=10))
    queue_wait = plan_job(CONFIG, "gamma-r0001", STEPS, None).queue_wait
    failed = JobStatus(JobState.FAILED, reason="walltime exceeded (10 s)")
    assert states_until_finished(launcher, handle)[1:] == [
        (START + queue_wait, JobStatus(JobState.RUNNING)),
        (START + queue_wait + 10, failed),
    ]
    assert not update_dir(workspace, "gamma-r0001").exists()  # killed jobs publish nothing
    assert "walltime exceeded (10 s)" in (workspace / "logs" / "gamma-r0001.err").read_text()
    launcher.cancel(handle)  # already over: keeps its outcome
    assert launcher.poll(handle) == failed


def test_failure_rate_fails_the_job_partway(workspace: Path) -> None:
    config = CONFIG.model_copy(update={"failure_rate": 0.999})
    launcher = SimulatedLauncher(config, VirtualClock(START))
    handle = launcher.submit(worker_spec(workspace, "delta-r0001"))
    (ended_at, status) = states_until_finished(launcher, handle)[-1]
    assert status.state is JobState.FAILED
    assert status.reason.startswith("simulated failure after") and "failure_rate 0.999" in status.reason
    assert handle.native.starts_at <= ended_at < handle.native.starts_at + RUN_SECONDS
    assert not update_dir(workspace, "delta-r0001").exists()


def test_a_worker_that_fails_fails_the_job_at_its_end(workspace: Path) -> None:
    other_base = MODEL.model_copy(update={"tiny": MODEL.tiny.model_copy(update={"seed": 1})})
    launcher = SimulatedLauncher(CONFIG, VirtualClock(START))
    handle = launcher.submit(worker_spec(workspace, "eps-r0001", model=other_base))
    seen = states_until_finished(launcher, handle)
    assert [status.state for _, status in seen] == [JobState.QUEUED, JobState.RUNNING, JobState.FAILED]
    ended_at, status = seen[-1]
    assert ended_at == handle.native.starts_at + RUN_SECONDS
    assert status.returncode == 1 and "fingerprint" in status.reason
    assert "fingerprint" in (workspace / "logs" / "eps-r0001.err").read_text()
    assert not update_dir(workspace, "eps-r0001").exists()


def test_cancel_is_final_and_idempotent(workspace: Path) -> None:
    launcher = SimulatedLauncher(CONFIG, VirtualClock(START))
    handle = launcher.submit(worker_spec(workspace, "zeta-r0001", walltime_s=1))  # fails by walltime: no worker run
    assert launcher.poll(handle).state is JobState.QUEUED
    launcher.cancel(handle)
    launcher.cancel(handle)
    launcher.clock.advance_to(START + 10_000)
    assert launcher.poll(handle) == JobStatus(JobState.CANCELLED, reason="cancelled")


def test_only_worker_commands_and_plain_names_are_accepted(tmp_path: Path) -> None:
    launcher = SimulatedLauncher(CONFIG, VirtualClock(START))
    for argv in ([sys.executable, "-c", "pass"], [sys.executable, "-m", "fedhpc", "worker"], []):
        with pytest.raises(SubmitError, match="only runs fedhpc worker tasks"):
            launcher.submit(JobSpec("x", argv, tmp_path))
    with pytest.raises(SubmitError, match="plain file name"):
        launcher.submit(JobSpec("a/b", [sys.executable, "-m", "fedhpc", "worker", "--task", "t.json"], tmp_path))
    foreign = JobHandle("local-1", JobSpec("x", [], tmp_path), submitted_at=0.0)
    assert launcher.poll(foreign).state is JobState.UNKNOWN
    launcher.cancel(foreign)


def test_an_init_task_runs_too(tmp_path: Path) -> None:
    """Any worker task runs in-process; one without training takes queue wait + startup."""
    task = WorkerTask(mode="init", round=0, facility="alpha", update_dir=tmp_path / "r0000", model=MODEL, device="cpu")
    task.write(tmp_path / "init.json")
    launcher = SimulatedLauncher(SimulatedLauncherConfig(startup=5), VirtualClock(0.0))
    argv = [sys.executable, "-m", "fedhpc", "worker", "--task", str(tmp_path / "init.json")]
    handle = launcher.submit(JobSpec("init", argv, tmp_path / "logs"))
    assert states_until_finished(launcher, handle)[-1] == (5.0, JobStatus(JobState.DONE, 0))
    ExchangeDir(tmp_path / "r0000").verify()


def test_simulate_builds_it_on_its_virtual_clock_and_the_registry_refuses_it(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    facility = FacilityConfig(name="alpha", data=tmp_path, launcher=CONFIG)
    launcher = simulated_launchers([facility], clock)["alpha"]
    assert isinstance(launcher, SimulatedLauncher) and launcher.clock is clock and launcher.config is CONFIG
    with pytest.raises(ConfigError, match="fedhpc simulate"):
        make_launcher(CONFIG)


# ---- configuration -------------------------------------------------------------------------------


def experiment_file(tmp_path: Path, launcher: dict) -> Path:
    (tmp_path / "alpha.jsonl").write_text('{"input": "H2O", "output": "water"}\n')
    raw = {"name": "sim", "facilities": [{"name": "alpha", "data": "alpha.jsonl", "launcher": launcher}]}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_documented_launcher_section_loads(tmp_path: Path) -> None:
    text = """
        kind: simulated
        seconds_per_step: 2.0
        queue_wait: {uniform: [0, 1200]}
        startup: 20
        failure_rate: 0.0
        seed: 0
    """
    launcher = load_experiment(experiment_file(tmp_path, yaml.safe_load(text))).facilities[0].launcher
    assert launcher == CONFIG
    assert (launcher.device, launcher.nprocs) == ("cpu", 1)


@pytest.mark.parametrize(
    ("launcher", "key", "fragment"),
    [
        ({"queue_wait": {"normal": 3}}, "facilities.0.launcher.queue_wait", "got the keys normal"),
        ({"queue_wait": {"uniform": [0, 1], "exponential": 3}}, "facilities.0.launcher.queue_wait", "exactly"),
        ({"queue_wait": {"uniform": [9, 1]}}, "facilities.0.launcher.queue_wait", "low (9) is above high (1)"),
        ({"queue_wait": -1}, "facilities.0.launcher.queue_wait", "non-negative number"),
        ({"startup": "slow"}, "facilities.0.launcher.startup", "non-negative number"),
        ({"seconds_per_step": {"lognormal": {"median": 0, "sigma": 1}}},
         "facilities.0.launcher.seconds_per_step.lognormal.median", "greater than 0"),
        ({"seconds_per_step": {"exponential": 0}}, "facilities.0.launcher.seconds_per_step.exponential", "greater"),
        ({"failure_rate": 1.0}, "facilities.0.launcher.failure_rate", "less than 1"),
        ({"device": "cuda"}, "facilities.0.launcher.device", "'cpu'"),
        ({"nprocs": 2}, "facilities.0.launcher.nprocs", "1"),
        ({"threads_per_rank": 2}, "facilities.0.launcher.threads_per_rank", "unknown key"),
    ],
    ids=["unknown_form", "two_forms", "reversed_uniform", "negative", "not_a_number", "lognormal_median",
         "exponential_mean", "failure_certain", "cuda", "two_ranks", "local_only_key"],
)  # fmt: skip
def test_bad_simulated_launchers_name_the_key(tmp_path: Path, launcher: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(experiment_file(tmp_path, {"kind": "simulated", **launcher}))
    assert info.value.key == key
    assert f"{key}: " in str(info.value) and fragment in str(info.value)
