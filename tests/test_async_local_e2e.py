"""An asynchronous run with real torchrun jobs and wall-clock time, stopped and resumed with `fedhpc run`."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, run_fedhpc
from fedhpc.exchange import ExchangeDir
from fedhpc.run.ledger import Ledger

EXAMPLE = ROOT / "examples" / "algorithms" / "fedcompass.yaml"


def args(run_dir: Path, rounds: int) -> list[str]:
    return [
        "run", str(EXAMPLE), "--set", f"run_dir={run_dir}", "--set", f"algorithm.rounds={rounds}",
        "--set", "algorithm.compass.min_steps=1", "--set", "algorithm.compass.max_steps=3",
        "--set", "algorithm.local_steps=3", "--set", "algorithm.batch_size=2",
    ]  # fmt: skip


def test_fedcompass_with_local_jobs_runs_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_fedhpc(*args(run_dir, 2))
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_fedhpc(*args(run_dir, 4))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming after version 2" in second.stdout

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2, 3, 4]
    assert [e.detail["resumed_from"] for e in ledger.events("run_started")] == [None, 2]
    # every job trained the steps it was assigned, within the configured range
    given = {e.detail["attempt"]: e.detail["local_steps"] for e in ledger.events("submitted")}
    assert set(given.values()) <= {1, 2, 3}
    for event in ledger.events("accepted"):
        assert event.detail["local_steps"] == given[event.detail["attempt"]]
    # the jobs cut off by the first run's end were taken up again by the second, not lost
    abandoned = {e.detail["attempt"] for e in ledger.events("job_abandoned")}
    picked_up = {e.detail["attempt"] for e in ledger.events("reattached")} | set(given)
    assert abandoned and abandoned <= picked_up
    final = ExchangeDir(run_dir / "global" / "r0004")
    final.verify()
    assert (run_dir / "report.html").exists()
