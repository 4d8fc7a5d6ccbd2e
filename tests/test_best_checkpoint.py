"""The best round by `evaluation.key_metric`: recorded in the ledger, never pruned, kept across a resume.

One real run (`export_runs.lora_run`: keep_last 1, round 2 evaluated by a real
`fedhpc eval` process, its server stopped after round 2 and a second one resumed it);
the rest on real ledgers and run directories with results documents in the
shape `fedhpc eval` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export_runs import KEY_METRIC, lora_run
from fedhpc.config import load_experiment
from fedhpc.errors import ConfigError
from fedhpc.run.best_round import consider, key_score, recorded_best
from fedhpc.run.ledger import Ledger
from fedhpc.run.rundir import RunDir


def results(**tasks: dict[str, float | None]) -> dict:
    """A results document with each task's metrics (values only; what ranking reads)."""
    return {"tasks": {task: {"metrics": {name: {"value": value, "ci95": None} for name, value in metrics.items()}}
                      for task, metrics in tasks.items()}}


def test_the_best_global_outlives_keep_last_and_the_resume(tmp_path_factory: pytest.TempPathFactory) -> None:
    made = lora_run(tmp_path_factory.getbasetemp() / "export-lora")
    assert [p.name for p in (made.run_dir / "eval").glob("r*.json")] == ["r0002.json"]
    scored = json.loads((made.run_dir / "eval" / "r0002.json").read_text())
    # the first server: round 2, the only one evaluated, is the best; round 2's commit (keep_last 1) pruned round 1
    assert made.best_after_first_call is not None and made.best_after_first_call.round == 2
    assert made.best_after_first_call.score == key_score(scored, KEY_METRIC)
    assert made.globals_after_first_call == ["r0000", "r0002"]

    ledger = Ledger(made.run_dir / "ledger.sqlite")
    assert ledger.last_complete_round() == 3
    assert [e.event for e in ledger.events() if e.event.startswith("run_")][-2:] == ["run_started", "run_stopped"]
    best = recorded_best(ledger)
    assert best is not None and (best.round, best.key_metric, best.mode) == (2, KEY_METRIC, "min")
    assert [e.round for e in ledger.events("best_round")] == [2]
    ledger.close()
    # the second server's commit of round 3 pruned with keep_last 1: round 2 stayed because the ledger says it is best
    assert sorted(p.name for p in (made.run_dir / "global").iterdir()) == ["r0000", "r0002", "r0003"]


def test_prune_keeps_round_0_the_latest_and_the_protected(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    for round in range(6):
        (run_dir.global_dir(round)).mkdir(parents=True)
    run_dir.prune(5, keep_last=1, protect=(2,))
    assert sorted(p.name for p in (tmp_path / "global").iterdir()) == ["r0000", "r0002", "r0005"]


def test_ranking_reads_task_metrics_and_means_and_keeps_the_earlier_of_a_tie(tmp_path: Path) -> None:
    assert key_score(results(a={"rmse": 2.0}, b={"rmse": 4.0}), "mean.rmse") == 3.0
    assert key_score(results(a={"rmse": 2.0}, b={"rmse": None}), "mean.rmse") is None
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert consider(ledger, 1, results(a={"rmse": 2.0}), "a.rmse", "min")[0] is not None
    assert consider(ledger, 2, results(a={"rmse": 2.0}), "a.rmse", "min") == (None, None)  # a tie
    assert consider(ledger, 3, results(a={"rmse": 3.0}), "a.rmse", "min") == (None, None)
    assert consider(ledger, 4, results(a={"rmse": 1.5}), "a.rmse", "min")[0] is not None
    best, skipped = consider(ledger, 5, results(a={"rmse": None}), "a.rmse", "min")
    assert best is None and skipped == "a.rmse is undefined (null) in round 5's results"
    best, skipped = consider(ledger, 6, results(a={"rmse": 1.0}), "a.accuracy", "min")
    assert best is None and "task a has no metric 'accuracy'; it has ['rmse']" in str(skipped)
    _, skipped = consider(ledger, 7, results(a={"rmse": 1.0}), "b.rmse", "min")
    assert "names task 'b', but the evaluation scored ['a']" in str(skipped)
    assert recorded_best(ledger).round == 4  # type: ignore[union-attr]
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.sqlite")  # what a resumed server reads
    assert recorded_best(reopened).score == 1.5  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("evaluation", "key", "message"),
    [
        ({"key_metric": "esol"}, "evaluation.key_metric", "must be TASK.METRIC or mean.METRIC"),
        ({"key_metric": "mean.rmse"}, "evaluation.mode", "is required with key_metric 'mean.rmse'"),
        ({"mode": "max"}, "evaluation.mode", "is set but evaluation.key_metric is not"),
        ({"key_metric": "mean.rmse", "mode": "lowest"}, "evaluation.mode", "'max' or 'min'"),
    ],
)
def test_key_metric_and_mode_are_checked_with_the_key_named(
    tmp_path: Path, evaluation: dict, key: str, message: str
) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps({"name": "x", "evaluation": {"data": str(tmp_path), **evaluation},
                                "facilities": [{"name": "a", "data": str(tmp_path)}]}))
    with pytest.raises(ConfigError) as raised:
        load_experiment(path, [])
    assert key in str(raised.value) and message in str(raised.value)
