"""A resumed server takes in what its killed predecessor left before it launches anything.

Synchronous FedAvg on the simulated launcher and the virtual clock (deterministic, seconds
per run); `Killed` stands for a SIGKILL at an exact point. Each test compares the final
global with an uninterrupted run's: bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fedhpc.run.global_chain as globals_module
from fedhpc.facility.base import JobSpec
from fedhpc.simulate.launcher import SimulatedLauncher
from fedhpc.facility.movers.filesystem import FilesystemMover
from fedhpc.config import load_experiment
from fedhpc.report.metrics_log import read_events
from fedhpc.report.progress import ProgressView
from fedhpc.clock import VirtualClock
from fedhpc.run.events import EventLog
from fedhpc.run.context import RunContext
from fedhpc.run.interrupts import StopFlag
from fedhpc.run.launches import Attempt, Facility, Launches
from fedhpc.run.ledger import Ledger
from fedhpc.run.rundir import RunDir
from fedhpc.report.metrics_log import MetricsLog
from rich.console import Console
from test_async_e2e import Killed, run, run_killed_after, scenario, tensors

FEDAVG = {"name": "fedavg", "rounds": 2}
SPEEDS = {"alpha": 1.0, "beta": 2.0}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final global of the same run, never stopped."""
    root = tmp_path_factory.mktemp("reference")
    return tensors(run(scenario(root, FEDAVG, SPEEDS)) / "global" / "r0002")


def _same(reference: dict[str, torch.Tensor], run_dir: Path) -> bool:
    final = tensors(run_dir / "global" / "r0002")
    return final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)


def _killed_in_submit(path: Path, monkeypatch: pytest.MonkeyPatch, job_name: str, published: bool) -> None:
    """Die right after `job_name` was submitted (its worker has run), before the server recorded it as submitted.

    `published=False`: the job is still writing its update (no manifest yet) when the server dies.
    """
    original = SimulatedLauncher.submit

    def submit_then_die(self: SimulatedLauncher, job: JobSpec):  # type: ignore[no-untyped-def]
        handle = original(self, job)
        if job.name == job_name:
            if not published:
                task = json.loads(Path(job.task or "").read_text())
                (Path(task["update_dir"]) / "manifest.json").unlink()
            raise Killed()
        return handle

    with monkeypatch.context() as patch:
        patch.setattr(SimulatedLauncher, "submit", submit_then_die)
        with pytest.raises(Killed):
            run(path)


def _blind_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher that cannot see a job of an earlier server (a local job whose process is gone)."""
    monkeypatch.setattr(SimulatedLauncher, "reattach", lambda self, job, submitted_at: None)


def test_a_job_killed_with_its_server_before_publishing_is_relaunched_under_a_new_attempt_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, torch.Tensor]
) -> None:
    path = scenario(tmp_path, FEDAVG, SPEEDS)
    _killed_in_submit(path, monkeypatch, "alpha-r0001-a0", published=False)
    _blind_launcher(monkeypatch)
    run_dir = run(path)

    ledger = Ledger(run_dir / "ledger.sqlite")
    (relaunched,) = ledger.events("relaunched")
    assert (relaunched.facility, relaunched.detail["previous"], relaunched.detail["attempt"]) == (
        "alpha", "r0001-a0", "r0001-a1"
    )
    alpha_ids = [e.detail["attempt"] for e in ledger.events("launching") if e.facility == "alpha"]
    assert len(alpha_ids) == len(set(alpha_ids)), f"an attempt id was reused: {alpha_ids}"
    assert {e.facility for e in ledger.events("accepted", round=1)} == {"alpha", "beta"}
    assert _same(reference, run_dir)


def test_an_update_published_while_the_server_was_down_is_collected_not_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, torch.Tensor]
) -> None:
    path = scenario(tmp_path, FEDAVG, SPEEDS)
    _killed_in_submit(path, monkeypatch, "alpha-r0001-a0", published=True)
    _blind_launcher(monkeypatch)
    run_dir = run(path)

    ledger = Ledger(run_dir / "ledger.sqlite")
    (collected,) = ledger.events("collected_after_restart")
    assert (collected.round, collected.facility, collected.detail["attempt"]) == (1, "alpha", "r0001-a0")
    alpha_round_1 = [e for e in ledger.events("launching", round=1) if e.facility == "alpha"]
    assert len(alpha_round_1) == 1, "the finished job was trained again"
    assert not ledger.events("relaunched")
    assert _same(reference, run_dir)


def test_a_resume_after_a_killed_init_succeeds_though_the_orphan_init_publishes_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, torch.Tensor]
) -> None:
    path = scenario(tmp_path, FEDAVG, SPEEDS)
    original = globals_module.run_server_command

    def killed_during_init(name: str, argv: list[str], log_dir: Path) -> str:
        if name == "init":
            raise Killed()
        return original(name, argv, log_dir)

    with monkeypatch.context() as patch:
        patch.setattr(globals_module, "run_server_command", killed_during_init)
        with pytest.raises(Killed):
            run(path)

    run_dir = tmp_path / "run"

    def orphan_publishes_first(name: str, argv: list[str], log_dir: Path) -> str:
        """The killed server's init worker writes round 0 where it was told, after the resumed server's clean-up."""
        if name == "init":
            (run_dir / "global" / "r0000").mkdir(parents=True)
            (run_dir / "global" / "r0000" / "model-00001.safetensors").write_bytes(b"half written")
        return original(name, argv, log_dir)

    monkeypatch.setattr(globals_module, "run_server_command", orphan_publishes_first)
    run(path)
    assert Ledger(run_dir / "ledger.sqlite").completed_rounds() == [0, 1, 2]
    assert _same(reference, run_dir)


def test_a_server_killed_after_the_commit_leaves_ledger_and_metrics_agreeing_after_the_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, torch.Tensor]
) -> None:
    path = scenario(tmp_path, FEDAVG, SPEEDS)
    run_killed_after(path, 1, monkeypatch)  # round 1 committed; not `aggregated` in metrics.jsonl, no round_complete
    run_dir = run(path)

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert [e.round for e in ledger.events("round_complete")] == [1, 2]
    (recovered,) = [e for e in ledger.events("round_complete") if e.round == 1]
    assert recovered.detail["mean_loss"] is not None
    lines = read_events(run_dir / "metrics.jsonl")
    assert sorted(e["round"] for e in lines if e["event"] == "aggregated") == [0, 1, 2]
    assert sorted(e["round"] for e in lines if e["event"] == "round_complete") == [1, 2]
    ids = [e["ledger_id"] for e in lines if "ledger_id" in e]
    assert len(ids) == len(set(ids)), "an event was written to metrics.jsonl twice"
    assert _same(reference, run_dir)


@pytest.mark.parametrize("content", [b"[]", b'"text"', b'{"step": "three"}', b'{"step": null}', b"{"])
def test_a_malformed_progress_file_is_ignored(tmp_path: Path, content: bytes) -> None:
    experiment = load_experiment(scenario(tmp_path, FEDAVG, SPEEDS), [])
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    mover = FilesystemMover(experiment.facilities[0].mover, run_dir.default_staging("alpha"))
    (run_dir.default_staging("alpha") / "progress").mkdir(parents=True)
    (run_dir.default_staging("alpha") / "progress" / "r0001-a0.json").write_bytes(content)
    clock = VirtualClock(0.0)
    ledger, metrics = Ledger(run_dir.ledger_path), MetricsLog(run_dir.metrics_path)
    with ProgressView("t", 2, ["alpha"], console=Console(quiet=True)) as view:
        facility = Facility(experiment.facilities[0], SimulatedLauncher(experiment.facilities[0].launcher, clock),
                            mover, experiment.recipe_for(experiment.facilities[0]))
        context = RunContext(run_dir, EventLog(ledger, metrics, clock), clock, view, StopFlag())
        jobs = Launches(context, {"alpha": facility}, experiment.algorithm, experiment.exchange)
        attempt = Attempt("alpha", 1, "r0001-a0", 2, 1, None, 0.0)
        jobs._show_progress(attempt)
    assert attempt.last_step == -1


def test_an_async_job_launched_after_the_last_commit_is_taken_in_not_launched_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job counter is restored from the last commit: the jobs launched after it are planned again, same ids.

    FedBuff with a buffer of 2: an arrival that does not fill the buffer relaunches its facility with
    no commit, so that job is in no committed state.
    """
    algorithm = {"name": "fedbuff", "rounds": 4, "buffer_size": 2}
    speeds = {"a": 1.0, "b": 1.5, "c": 4.0}
    straight = run(scenario(tmp_path / "straight", algorithm, speeds))
    events = Ledger(straight / "ledger.sqlite").events()
    committed = next(e for e in events if e.event == "aggregated" and e.round == 2)
    target = next(e.detail["attempt"] for e in events if e.event == "submitted" and e.ts > committed.ts)

    path = scenario(tmp_path / "killed", algorithm, speeds)
    original = Launches.launch

    def launch_then_die(self: Launches, *args, **kwargs) -> Attempt:  # type: ignore[no-untyped-def]
        attempt = original(self, *args, **kwargs)
        if attempt.attempt_id == target:
            raise Killed()
        return attempt

    with monkeypatch.context() as patch:
        patch.setattr(Launches, "launch", launch_then_die)
        with pytest.raises(Killed):
            run(path)
    resumed = run(path)

    ledger = Ledger(resumed / "ledger.sqlite")
    submitted = [(e.facility, e.detail["attempt"]) for e in ledger.events("submitted")]
    assert len(submitted) == len(set(submitted)), f"a job was launched twice under one id: {submitted}"
    assert target in {e.detail["attempt"] for e in ledger.events("reattached")}
    final_a, final_b = tensors(straight / "global" / "r0004"), tensors(resumed / "global" / "r0004")
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)
