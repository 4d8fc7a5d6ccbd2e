"""`fedhpc eval` writes the answers it scored, and `fedhpc score` on them gives the same results (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedhpc.chem.smolinstruct import load_records
from fedhpc.cli import app
from fedhpc.config import ModelConfig
from fedhpc.exchange import WorkerTask
from fedhpc.worker.main import run_task
from smolinstruct_release import write_release


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run directory holding the tiny model's round-0 global, set to evaluate on a miniature release."""
    root = tmp_path_factory.mktemp("compose")
    release = write_release(root)
    run_dir = root / "run"
    run_dir.mkdir()
    experiment = {
        "name": "compose",
        "model": {"source": "tiny-llama"},
        "evaluation": {"data": str(release), "max_new_tokens": {"text": 16, "smiles": 16}, "batch_size": 4},
        "facilities": [{"name": "a", "data": str(release)}],
    }
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    task = WorkerTask(mode="init", round=0, facility="a", update_dir=run_dir / "global" / "r0000", model=ModelConfig(),
                      device="cpu")  # fmt: skip
    task.write(root / "init.json")
    run_task(root / "init.json")
    return run_dir, release


def test_score_of_evals_predictions_gives_evals_results(evaluated_run: tuple[Path, Path]) -> None:
    run_dir, release = evaluated_run
    out = run_dir / "eval" / "r0000.json"
    evaluated = CliRunner().invoke(app, ["eval", "--model", f"{run_dir}:0", "--out", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(out.read_text())
    predictions = run_dir / "eval" / "r0000.predictions.jsonl"
    lines = [json.loads(text) for text in predictions.read_text(encoding="utf-8").splitlines()]
    records = load_records(release, "test")
    assert sorted((x["task"], x["idx"], x["target"]) for x in lines) == sorted(
        (r["task"], r["idx"], r["target"]) for r in records
    )
    assert {x["split"] for x in lines} == {"test"} and all(isinstance(x["pred"], str) for x in lines)
    budgets = result["decoding"]["max_new_tokens"]
    assert result["decoding"]["num_beams"] == 1 and result["round"] == 0 and result["lenient"] is False
    assert (budgets["molecule_captioning"], budgets["retrosynthesis"], budgets["property_prediction-bbbp"]) == (
        16, 16, 32)  # the config's per-family values over the defaults  # fmt: skip

    scored = CliRunner().invoke(app, ["score", str(predictions), "--data", str(release)])
    assert scored.exit_code == 0, scored.output
    again = json.loads(scored.stdout)
    assert again["tasks"] == result["tasks"]  # metrics, intervals, baselines and verdicts alike
    assert again["examples"] == result["examples"] == len(records)


def test_beam_search_and_lenient_extraction_from_the_command_line(evaluated_run: tuple[Path, Path]) -> None:
    run_dir, _ = evaluated_run
    out = run_dir / "beam.json"
    evaluated = CliRunner().invoke(app, ["eval", "--model", f"{run_dir}:0", "--out", str(out), "--num-beams", "2",
                                         "--max-new-tokens", "4", "--lenient", "--limit", "1"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(out.read_text())
    assert result["decoding"]["num_beams"] == 2 and set(result["decoding"]["max_new_tokens"].values()) == {4}
    assert result["lenient"] is True and "LENIENT extraction (not LlaSMol's)" in evaluated.stdout
    assert all(entry["n"] == 1 for entry in result["tasks"].values())
    assert (run_dir / "beam.predictions.jsonl").is_file()


def test_bad_data_is_exit_2_naming_file_and_line_and_writes_nothing(
    evaluated_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, _ = evaluated_run
    bad = tmp_path / "data" / "test" / "name_conversion-s2f.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"input": "<SMILES> C </SMILES>", "output": "<MOLFORMULA> CH4 </MOLFORMULA>"}\n{"input": 3}\n')
    out = tmp_path / "scores.json"
    evaluated = CliRunner().invoke(app, ["eval", "--model", f"{run_dir}:0", "--data", str(bad.parents[1]),
                                         "--out", str(out)])  # fmt: skip
    assert evaluated.exit_code == 2, evaluated.output
    assert f"{bad}:2" in evaluated.output and "'input' and 'output'" in evaluated.output
    assert not out.exists() and not out.with_suffix(".predictions.jsonl").exists()
