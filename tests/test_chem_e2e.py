"""The flagship path on a tiny model: chemistry data → federated run with server-side eval → report → `fedhpc eval`.

The real SmolLM2 run is `make demo`; this covers the same commands and files in well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import run_fedhpc
from fedhpc.run.ledger import Ledger

TASKS = {"name_conversion-s2f", "property_prediction-logp", "property_prediction-tpsa", "property_prediction-lipinski"}


def test_chem_run_evaluates_base_and_final_round_and_reports(tmp_path: Path) -> None:
    data = tmp_path / "chem"
    built = run_fedhpc("data", "chem", "--out", str(data), "--facilities", "a:s2f+lipinski,b:logp+tpsa",
                       "--max-molecules", "80")
    assert built.returncode == 0, built.stderr
    experiment = {
        "name": "chem-tiny",
        "run_dir": str(tmp_path / "run"),
        "model": {"source": "tiny-llama"},
        "data": {"seq_len": 128},
        "algorithm": {"rounds": 1, "local_steps": 2, "batch_size": 2, "lr": 0.005},
        "evaluation": {"data": str(data / "dataset"), "limit_per_task": 3, "max_new_tokens": 6},
        "facilities": [
            {"name": "a", "data": str(data / "facilities" / "a")},
            {"name": "b", "data": str(data / "facilities" / "b")},
        ],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))

    result = run_fedhpc("run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    shown = result.stdout + result.stderr
    for brief in ("name_conversion-s2f element_match=", "property_prediction-logp rmse=",
                  "property_prediction-lipinski accuracy="):
        assert brief in shown, f"the run's progress shows each task's primary metric: {brief!r} missing"

    run_dir = tmp_path / "run"
    ledger = Ledger(run_dir / "ledger.sqlite")
    evaluated = {event.round: event.detail["tasks"] for event in ledger.events("eval")}
    assert set(evaluated) == {0, 1}
    assert set(evaluated[1]) == TASKS
    assert evaluated[1]["property_prediction-lipinski"]["n"] == 3
    assert evaluated[1]["property_prediction-logp"]["baseline"]["name"].startswith("training mean (")
    assert (run_dir / "eval" / "r0001.predictions.jsonl").is_file()
    report = (run_dir / "report.html").read_text()
    assert "property_prediction-logp" in report

    out = tmp_path / "scores.json"
    again = run_fedhpc("eval", "--model", f"{run_dir}:1", "--limit", "2", "--out", str(out))
    assert again.returncode == 0, again.stderr
    scores = json.loads(out.read_text())
    assert scores["round"] == 1 and set(scores["tasks"]) == TASKS
    assert all(entry["n"] == 2 for entry in scores["tasks"].values())


def test_eval_of_a_missing_round_says_so(tmp_path: Path) -> None:
    result = run_fedhpc("eval", "--model", f"{tmp_path}:3")
    assert result.returncode == 1
    assert "experiment.yaml" in result.stderr
