"""`fedhpc status` (table and --json) on ledgers written through the server's API.

A real run's status (and its console failure line and exit code 5) is checked in
test_run_e2e's broken-updates run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from fedhpc.cli import app
from fedhpc.errors import ExitCode
from fedhpc.run.ledger import Ledger

STATUS_KEYS = {"run_dir", "name", "state", "rounds_complete", "rounds_planned", "best_round", "reason", "epsilon",
               "delta", "facilities"}
FACILITY_KEYS = {"name", "state", "round", "loss", "failure", "failure_round", "log"}


def _ledger_of_a_run_in_round_2(run_dir: Path) -> Ledger:
    """A ledger as a server writes it: round 1 complete, and in round 2 one facility of each state."""
    (run_dir / "logs" / "r0002").mkdir(parents=True)
    (run_dir / "logs" / "r0002" / "beta-r0002-a0.err").write_text("Traceback ...\nValueError: bad batch\n")
    ledger = Ledger(run_dir / "ledger.sqlite")
    ledger.record("run_started", name="demo", facilities=["alpha", "beta", "gamma", "delta"], rounds=3,
                  resumed_from=None, algorithm="fedavg")
    for facility, loss in (("alpha", [2.0, 1.5]), ("beta", [2.5, 2.25]), ("gamma", [3.0]), ("delta", [1.0])):
        ledger.record("launching", 1, facility, attempt="r0001-a0")
        ledger.record("accepted", 1, facility, loss=loss, attempt="r0001-a0")
    ledger.complete_round(1, str(run_dir / "global" / "r0001"), 4)
    for facility in ("alpha", "beta", "gamma"):
        ledger.record("launching", 2, facility, attempt="r0002-a0")
        ledger.record("submitted", 2, facility, attempt="r0002-a0", job_id="1")
    ledger.record("job_running", 2, "alpha", attempt="r0002-a0")
    ledger.record("job_finished", 2, "beta", state="failed", returncode=1, attempt="r0002-a0", start=0.0,
                  reason="exited with code 1; stderr tail:\nTraceback ...\nValueError: bad batch")
    return ledger


def test_status_says_each_facilitys_state_round_loss_and_last_failure(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ledger = _ledger_of_a_run_in_round_2(run_dir)
    log = run_dir / "logs" / "r0002" / "beta-r0002-a0.err"

    result = CliRunner().invoke(app, ["status", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == STATUS_KEYS and all(set(f) == FACILITY_KEYS for f in document["facilities"])
    assert {k: document[k] for k in ("name", "state", "rounds_complete", "rounds_planned", "best_round", "epsilon")} == {
        "name": "demo", "state": "running", "rounds_complete": 1, "rounds_planned": 3, "best_round": None,
        "epsilon": None}
    rows = {f["name"]: f for f in document["facilities"]}
    assert [rows[n]["state"] for n in ("alpha", "beta", "gamma", "delta")] == ["training", "failed", "queued", "idle"]
    assert rows["alpha"]["round"] == 2 and rows["alpha"]["loss"] == 1.5  # the last step of its latest update
    assert rows["beta"]["failure"] == "job failed: exited with code 1: ValueError: bad batch"
    assert rows["beta"]["failure_round"] == 2 and rows["beta"]["log"] == str(log)
    assert rows["delta"]["round"] == 1 and rows["delta"]["failure"] is None

    # The run ends: facilities without a job in flight are done, and the best round shows (run/best_round.py).
    ledger.record("accepted", 2, "alpha", loss=[1.25], attempt="r0002-a0")
    ledger.set_meta("best_round", json.dumps({"round": 1, "score": 0.5, "key_metric": "mean.exact", "mode": "max"}))
    ledger.record("run_stopped", rounds_completed=1, error="QuorumNotMet",
                  reason="round 2: 1 update(s) accepted, algorithm.min_facilities is 2")
    ledger.close()
    table = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    head, *lines = table.stdout.splitlines()
    assert head == (f"{run_dir}: demo stopped, 1 of 3 rounds complete, best round 1 "
                    "(round 2: 1 update(s) accepted, algorithm.min_facilities is 2)")
    cells = {row[0]: row for row in (re.split(r"\s*│\s*", line.strip("│ ")) for line in lines if "│" in line)}
    assert cells["alpha"] == ["alpha", "done", "2", "1.2500", "-"]
    assert cells["beta"] == ["beta", "failed", "2", "2.2500", "round 2: job failed: exited with code 1: ValueError: "
                             "bad batch"]
    assert cells["gamma"][1] == "queued" and cells["delta"][1] == "done"


def test_status_of_a_directory_that_is_no_run_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "has no ledger.sqlite" in result.output
    assert not any(tmp_path.iterdir())  # status created nothing
