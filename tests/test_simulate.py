"""`fedhpc simulate` end to end: two algorithms on the example scenario, a short virtual horizon."""

from __future__ import annotations

import json
import runpy

from conftest import ROOT, run_fedhpc

SCENARIO = ROOT / "examples" / "simulate" / "scenario.yaml"


def test_simulate_compares_algorithms_by_virtual_time_to_target(tmp_path):
    copy = tmp_path / "scenario.yaml"
    copy.write_text(SCENARIO.read_text())
    runpy.run_path(str(SCENARIO.parent / "make_data.py"), run_name="not_main")["main"](tmp_path / "data")
    out = tmp_path / "out"
    result = run_fedhpc(
        "simulate", str(copy), "--heldout", str(tmp_path / "data" / "heldout.jsonl"), "--target-loss", "4.5",
        "--horizon", "900", "--compare", "fedavg", "--compare", "fedasync:algorithm.name=fedasync,algorithm.alpha=0.5",
        "--out", str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| fedasync |" in result.stdout and "| fedavg |" in result.stdout
    outcomes = {o["label"]: o for o in json.loads((out / "results.json").read_text())["outcomes"]}
    fedavg, fedasync = outcomes["fedavg"], outcomes["fedasync"]
    assert fedasync["algorithm"] == "fedasync" and fedavg["algorithm"] == "fedavg"
    # every global published within the horizon was scored, from the base model on
    for outcome in outcomes.values():
        times = [t for t, _ in outcome["curve"]]
        assert times[0] == 0.0 and times == sorted(times) and times[-1] <= 900
    # in this scenario the synchronous rounds wait for a 0-20 minute queue; FedAsync does not
    assert fedasync["best_loss"] < fedasync["curve"][0][1]
    assert fedasync["versions"] > fedavg["versions"]
    assert fedasync["time_to_target"] is not None
    assert fedavg["time_to_target"] is None or fedasync["time_to_target"] < fedavg["time_to_target"]
    # the runs are real: their run directories hold a ledger and every global
    assert (out / "fedasync" / "global" / f"r{fedasync['versions']:04d}").exists()
