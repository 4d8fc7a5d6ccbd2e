"""The server SIGKILLed at each phase of a run, or interrupted, then resumed with the same command.

Each case kills a real `fedhpc run` (two facilities on the local launcher) at an
exact code point (`server_faults.py`, armed through FEDHPC_TEST_SERVER_KILL),
checks that its jobs died with it, reruns the command and checks the
invariants of `invariants.py`: every round committed once from both
facilities, the final global bit-identical to an uninterrupted run's, attempt
ids never reused, no job failed for the server's sake, no process left and
nothing written outside the run directory.

The whole matrix is slow-marked (about 4 minutes of real runs even for one point
per recovery path). The default run covers each recovery path with faster tests:
tests/test_resume_reattach.py kills the server at the same points on the
simulated launcher (round 0 not committed; jobs submitted but not recorded; an
update published while the server was down; the round committed but not yet
logged), tests/test_run_e2e.py kills a real server mid-round, and
tests/test_interrupts.py interrupts one with SIGINT.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import QUICKSTART, kill_processes_mentioning
from fedhpc.report.metrics_log import read_events
from fedhpc.run.ledger import Ledger
from invariants import (
    RUN_TIMEOUT_S,
    ServerRun,
    check_attempts,
    check_left_nothing,
    check_no_failed_jobs,
    check_rounds,
    differing_tensors,
    final_global,
    orphans_after,
    reference_global,
    run_command,
    run_server,
    server_env,
    tree_listing,
)
from server_faults import MARKER

RECOVERY_POINTS = ["init", "after_submit:1", "before_commit:2", "after_commit:3"]
"""One per recovery path: Ledger.complete_round is entered for round 0, then 1, then 2 (`:3` is the last round)."""
SLOW_POINTS = [
    "staging:1", "after_submit:2", "training:4", "pulling:1", "verifying:2", "aggregating:1",
    "before_commit:1", "after_commit:2", "pruning:1", "report:1",
]  # fmt: skip
RANDOM_KILLS = 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return reference_global(tmp_path_factory)


def _resume_and_check(
    tmp_path: Path, run_dir: Path, reference: dict[str, torch.Tensor], outside: list[str], example: dict,
    record_property,
) -> ServerRun:
    """Rerun the same command without any fault and check every invariant."""
    resumed = run_server(run_dir, tmp_path, server_env())
    record_property("resume_seconds", round(resumed.seconds, 2))
    assert resumed.returncode == 0, resumed.explain()
    check_rounds(run_dir)
    check_attempts(run_dir)
    check_no_failed_jobs(run_dir)
    differing = differing_tensors(final_global(run_dir), reference)
    assert not differing, f"final global differs from the uninterrupted run's in {differing}"
    check_left_nothing(run_dir, tmp_path, outside, example)
    return resumed


def _kill_at(point: str, tmp_path: Path, reference: dict[str, torch.Tensor], record_property) -> None:
    """Kill at `point`, resume, check. Processes the killed server left are let be until the resume has
    ended (as they would be in real life), so a resume that trips over them fails here too."""
    run_dir = tmp_path / "run"
    outside = sorted(p.name for p in tmp_path.parent.iterdir())
    example = tree_listing(QUICKSTART.parent)
    problems = []
    try:
        killed = run_server(run_dir, tmp_path, server_env(FEDHPC_TEST_SERVER_KILL=point))
        assert killed.returncode == -signal.SIGKILL and f"{MARKER} {point}" in killed.stderr, killed.explain()
        record_property("killed_after_seconds", round(killed.seconds, 2))
        problems += _orphans(run_dir, record_property)
        problems += _resumed(tmp_path, run_dir, reference, outside, example, record_property)
    finally:
        kill_processes_mentioning(str(run_dir))
    assert not problems, "\n".join(problems)


def _orphans(run_dir: Path, record_property) -> list[str]:
    """What outlived the killed server past the grace period, as problems; the counts go to the junit record."""
    first, left = orphans_after(run_dir)
    record_property("processes_at_kill", first)
    record_property("orphans_after_grace", len(left))
    return [f"the killed server's processes outlived it by {len(left)}: {left[:3]}"] if left else []


def _resumed(
    tmp_path: Path, run_dir: Path, reference: dict[str, torch.Tensor], outside: list[str], example: dict,
    record_property,
) -> list[str]:
    """Resume and check every invariant; a broken one is a problem, reported with the kill's own."""
    try:
        _resume_and_check(tmp_path, run_dir, reference, outside, example, record_property)
    except AssertionError as e:
        return [f"after the resume: {e}"]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("point", RECOVERY_POINTS)
def test_server_killed_at_a_phase_resumes_to_the_same_global(
    point: str, tmp_path: Path, reference: dict[str, torch.Tensor], record_property
) -> None:
    _kill_at(point, tmp_path, reference, record_property)


@pytest.mark.slow
@pytest.mark.parametrize("point", SLOW_POINTS)
def test_server_killed_at_every_phase_resumes_to_the_same_global(
    point: str, tmp_path: Path, reference: dict[str, torch.Tensor], record_property
) -> None:
    _kill_at(point, tmp_path, reference, record_property)


def _events_seen(run_dir: Path) -> set[tuple[str, int | None]]:
    path = run_dir / "metrics.jsonl"
    return {(e["event"], e.get("round")) for e in read_events(path)} if path.exists() else set()


def _start_and_wait_for(run_dir: Path, cwd: Path, wanted: set[tuple[str, int | None]]) -> subprocess.Popen:
    """Start the server and return once metrics.jsonl shows every event in `wanted`."""
    server = subprocess.Popen(run_command(run_dir), cwd=cwd, env=server_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not wanted <= _events_seen(run_dir):
        assert server.poll() is None, f"the server ended (exit {server.returncode}) before {wanted}"
        assert time.monotonic() < deadline, f"no {wanted} within {RUN_TIMEOUT_S} s"
        time.sleep(0.1)
    return server


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [
        pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow),
    ],
)
def test_interrupted_mid_round_stops_cleanly_and_resumes_to_the_same_global(
    signum: int, exit_code: int, tmp_path: Path, reference: dict[str, torch.Tensor], record_property
) -> None:
    run_dir = tmp_path / "run"
    outside = sorted(p.name for p in tmp_path.parent.iterdir())
    example = tree_listing(QUICKSTART.parent)
    try:
        server = _start_and_wait_for(run_dir, tmp_path, {("job_running", 1)})
        try:
            server.send_signal(signum)
            stdout, stderr = server.communicate(timeout=120)
        finally:
            server.kill()
        interrupted = ServerRun(server.returncode, stdout, stderr, 0.0)
        assert server.returncode == exit_code, interrupted.explain()
        assert "resume" in (stdout + stderr).lower(), "the console does not say how to resume"
        ledger = Ledger(run_dir / "ledger.sqlite")
        try:
            assert ledger.events("run_interrupted"), "the ledger does not record the interruption"
            assert not ledger.events("run_finished"), "an interrupted run is recorded as finished"
        finally:
            ledger.close()
        _resume_and_check(tmp_path, run_dir, reference, outside, example, record_property)
    finally:
        kill_processes_mentioning(str(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(RANDOM_KILLS))
def test_server_killed_at_a_random_moment_resumes_to_the_same_global(
    seed: int, tmp_path: Path, reference: dict[str, torch.Tensor], record_property
) -> None:
    """SIGKILL after a seeded delay within an uninterrupted run's length (~25 s on two cores)."""
    run_dir = tmp_path / "run"
    outside = sorted(p.name for p in tmp_path.parent.iterdir())
    example = tree_listing(QUICKSTART.parent)
    delay = random.Random(seed).uniform(0.5, 25.0)
    record_property("kill_delay_seconds", round(delay, 2))
    server = subprocess.Popen(run_command(run_dir), cwd=tmp_path, env=server_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    problems = []
    try:
        try:
            server.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            problems += _orphans(run_dir, record_property)
        problems += _resumed(tmp_path, run_dir, reference, outside, example, record_property)
    finally:
        kill_processes_mentioning(str(run_dir))
    assert not problems, "\n".join(problems)
