"""A facility's job fails (exits non-zero, loses a rank, hangs): the round closes without it, and says why.

The fault sits in the server's environment (workers inherit it) and names its
facility (FEDHPC_TEST_FAULT_FACILITY), so removing it for a resume leaves the
experiment unchanged. Below quorum the run stops with QuorumNotMet; a resume
once the fault is gone completes to the same global as a run that never failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import QUICKSTART, kill_processes_mentioning
from fedhpc.run.ledger import Ledger
from invariants import (
    check_attempts,
    check_left_nothing,
    check_rounds,
    differing_tensors,
    final_global,
    reference_global,
    run_server,
    server_env,
    tree_listing,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return reference_global(tmp_path_factory)


def _failures(run_dir: Path, facility: str) -> list[str]:
    """The reason of each of `facility`'s jobs that did not end DONE."""
    ledger = Ledger(run_dir / "ledger.sqlite")
    try:
        finished = ledger.events("job_finished")
    finally:
        ledger.close()
    return [str(e.detail.get("reason")) for e in finished if e.facility == facility and e.detail["state"] != "done"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("faults", "overrides", "failing", "rounds_failed", "reason"),
    [
        ({"FEDHPC_TEST_FAULT": "crash"}, (), "alpha", [1, 2], "exited with code 3"),
        ({"FEDHPC_TEST_FAULT": "rank_kill", "FEDHPC_TEST_KILL_RANK": "1"}, (), "beta", [1, 2],
         "rank 1 was killed by signal 9"),
        ({"FEDHPC_TEST_FAULT": "slow", "FEDHPC_TEST_SLOW_SECONDS": "600", "FEDHPC_TEST_SLOW_ROUNDS": "1"},
         ("--set", "algorithm.round_timeout=90"), "alpha", [1], "round_timeout (90 s) passed"),
    ],
    ids=["exit-3", "rank-sigkill", "hang-past-round-timeout"],
)
def test_a_failing_facility_is_left_out_of_its_rounds_with_the_reason(
    faults: dict[str, str], overrides: tuple[str, ...], failing: str, rounds_failed: list[int], reason: str,
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    outside = sorted(p.name for p in tmp_path.parent.iterdir())
    example = tree_listing(QUICKSTART.parent)
    try:
        result = run_server(run_dir, tmp_path, server_env(FEDHPC_TEST_FAULT_FACILITY=failing, **faults), *overrides)
        assert result.returncode == 5, result.explain()  # ExitCode.COMPLETED_WITH_FAILURES
        others = [f for f in ("alpha", "beta") if f != failing]
        check_rounds(run_dir, {r: others for r in rounds_failed})
        check_attempts(run_dir)
        reasons = _failures(run_dir, failing)
        assert len(reasons) == len(rounds_failed) and all(reason in r for r in reasons), reasons
        assert failing in result.stdout + result.stderr, "the console does not name the failed facility"
        check_left_nothing(run_dir, tmp_path, outside, example)
    finally:
        kill_processes_mentioning(str(run_dir))


@pytest.mark.slow  # tests/test_run_e2e.py stops below quorum in the default run; the resume is any mid-round resume
def test_below_quorum_stops_and_a_resume_without_the_fault_completes_to_the_same_global(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    run_dir = tmp_path / "run"
    outside = sorted(p.name for p in tmp_path.parent.iterdir())
    example = tree_listing(QUICKSTART.parent)
    try:
        quorum = ("--set", "algorithm.min_facilities=2")
        crash = server_env(FEDHPC_TEST_FAULT="crash", FEDHPC_TEST_FAULT_FACILITY="alpha")
        stopped = run_server(run_dir, tmp_path, crash, *quorum)
        assert stopped.returncode == 3, stopped.explain()  # ExitCode.QUORUM_NOT_MET
        assert "min_facilities" in stopped.stdout + stopped.stderr, stopped.explain()
        ledger = Ledger(run_dir / "ledger.sqlite")
        try:
            assert ledger.completed_rounds() == [0]
        finally:
            ledger.close()
        assert any("exited with code 3" in r for r in _failures(run_dir, "alpha"))

        resumed = run_server(run_dir, tmp_path, server_env(), *quorum)
        assert resumed.returncode == 0, resumed.explain()
        check_rounds(run_dir)
        check_attempts(run_dir)
        differing = differing_tensors(final_global(run_dir), reference)
        assert not differing, f"final global differs from a run that never failed in {differing}"
        check_left_nothing(run_dir, tmp_path, outside, example)
    finally:
        kill_processes_mentioning(str(run_dir))
