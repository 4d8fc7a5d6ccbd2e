"""`fedhpc score`: predictions scored against the release or a built dataset, and errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedhpc.chem.smolinstruct import load_records, write_split
from fedhpc.cli import app
from fedhpc.evaluation.results import training_answers
from smolinstruct_release import write_release

RELEASE_COUNTS = {"molecule_captioning": 1, "name_conversion-s2f": 3, "property_prediction-bbbp": 2,
                  "property_prediction-esol": 2, "property_prediction-sider": 2, "retrosynthesis": 3}  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(tmp_path_factory.mktemp("release"))


def line(record: dict[str, Any], pred: str, split: str = "test") -> dict[str, Any]:
    return {"task": record["task"], "split": split, "idx": record["idx"], "target": record["target"], "pred": pred}


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in lines), encoding="utf-8")
    return path


def score(*args: str) -> Any:
    return CliRunner().invoke(app, ["score", *args])


def best(entry: dict[str, Any]) -> float:
    return 1.0 if entry["higher_is_better"] else 0.0


def test_the_gold_answers_score_best_on_every_release_task(
    tmp_path: Path, release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDHPC_CAPTION_TOKENIZER", str(tmp_path / "no-vocabulary"))  # METEOR's tokens: missing
    records = load_records(release, "test")
    predictions = write_lines(tmp_path / "p.jsonl", [line(r, r["output"]) for r in records])
    result = score(str(predictions), "--data", str(release))
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["round"], document["split"], document["lenient"], document["decoding"]) == (None, "test", False,
                                                                                                    None)  # fmt: skip
    assert document["examples"] == len(records) == sum(RELEASE_COUNTS.values())
    assert {task: entry["n"] for task, entry in document["tasks"].items()} == RELEASE_COUNTS
    captioning = document["tasks"].pop("molecule_captioning")
    for task, entry in document["tasks"].items():
        value = entry["metrics"][entry["primary"]]
        assert value["value"] == pytest.approx(best(entry)), task
        assert value["ci95"] is not None and set(entry["baseline"]) == {"name", "metrics"}
        assert "notes" not in entry
    # METEOR cannot be computed without its tokenizer: null, not a zero, and the output says why and what to do
    assert captioning["primary"] == "meteor" and captioning["metrics"]["meteor"] == {"value": None, "ci95": None}
    assert captioning["beats_baseline"] is False and captioning["metrics"]["rouge1"]["value"] == 1.0
    assert "huggingface-cli download" in captioning["notes"]["meteor_unavailable"]
    assert "molecule_captioning: meteor unavailable:" in result.stderr
    esol = document["tasks"]["property_prediction-esol"]
    # the training answers 1.10, 0.93, -0.89 have mean 0.38; on the test answers 1.22 and -1.64 that is RMSE 1.547
    assert esol["baseline"]["name"] == "training mean (0.38)"
    assert esol["baseline"]["metrics"]["rmse"]["value"] == pytest.approx(1.5469, abs=1e-3)
    assert document["tasks"]["property_prediction-bbbp"]["baseline"]["name"] == "majority class (Yes)"
    assert "predictions: test split, 13 questions" in result.stderr and "beats" in result.stderr


def test_another_gold_answer_of_the_same_input_counts_and_extra_lines_are_more_answers(
    tmp_path: Path, release: Path
) -> None:
    retro = [r for r in load_records(release, "test") if r["task"] == "retrosynthesis"]
    assert retro[0]["raw_input"] == retro[1]["raw_input"]  # two records, two reactant sets for one product
    lines = [
        line(retro[0], f"<SMILES> {retro[1]['raw_output']} </SMILES>"),  # idx 0 answered with idx 1's gold
        line(retro[1], "<SMILES> CCCCCC </SMILES>"),
        line(retro[2], f"<SMILES> {retro[2]['raw_output']} </SMILES>"),
        line(retro[0], "<SMILES> CCCCCC </SMILES>"),  # a second answer to idx 0, after its first
    ]
    result = score(str(write_lines(tmp_path / "p.jsonl", lines)), "--data", str(release))
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["tasks"]["retrosynthesis"]
    assert entry["n"] == 3 and json.loads(result.stdout)["examples"] == 3
    assert entry["metrics"][entry["primary"]]["value"] == pytest.approx(2 / 3)


def test_lenient_extraction_is_opt_in_and_labelled(tmp_path: Path, release: Path) -> None:
    bbbp = [r for r in load_records(release, "test") if r["task"] == "property_prediction-bbbp"]
    lines = [line(r, f"<BOOLEAN> {r['raw_output']}") for r in bbbp]  # no right tag: LlaSMol reads no answer
    path = write_lines(tmp_path / "p.jsonl", lines)
    strict = score(str(path), "--data", str(release))
    lenient = score(str(path), "--data", str(release), "--lenient")
    assert strict.exit_code == 0 and lenient.exit_code == 0, strict.stderr + lenient.stderr
    strict_doc, lenient_doc = json.loads(strict.stdout), json.loads(lenient.stdout)
    assert strict_doc["tasks"]["property_prediction-bbbp"]["metrics"]["accuracy"]["value"] == 0.0
    assert lenient_doc["tasks"]["property_prediction-bbbp"]["metrics"]["accuracy"]["value"] == 1.0
    assert lenient_doc["lenient"] is True and "LENIENT extraction (not LlaSMol's)" in lenient.stderr
    assert "LENIENT" not in strict.stderr


def test_a_built_dataset_numbers_questions_by_position(tmp_path: Path) -> None:
    def record(split: str, smiles: str, formula: str) -> dict[str, Any]:
        return {"input": f"Formula of <SMILES> {smiles} </SMILES> ?", "raw_input": smiles, "raw_output": formula,
                "output": f"<MOLFORMULA> {formula} </MOLFORMULA>", "task": "name_conversion-s2f",
                "split": split}  # fmt: skip

    data = tmp_path / "dataset"
    write_split(data, "train", [record("train", "CCO", "C2H6O"), record("train", "OCC", "C2H6O")])
    write_split(data, "test", [record("test", "C", "CH4"), record("test", "CCO", "C2H6O"), record("test", "O", "H2O")])
    lines = [{"task": "name_conversion-s2f", "split": "test", "idx": i, "target": None, "pred": f"<MOLFORMULA> {f} "
              "</MOLFORMULA>"} for i, f in enumerate(["CH4", "C2H6O", "CH4"])]  # fmt: skip
    result = score(str(write_lines(tmp_path / "p.jsonl", lines)), "--data", str(data))
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["tasks"]["name_conversion-s2f"]
    assert entry["metrics"][entry["primary"]]["value"] == pytest.approx(2 / 3)
    assert entry["baseline"]["name"] == "most frequent training answer"  # C2H6O: right on 1 of 3
    assert entry["baseline"]["metrics"][entry["primary"]]["value"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"task": "name_conversion-i2s", "idx": 0}, "unknown task 'name_conversion-i2s'"),
        ({"task": "name_conversion-s2f", "idx": 3},
         "unknown idx 3 of task 'name_conversion-s2f' (3 questions, idx 0..2)"),
        ({"task": "property_prediction-sider", "idx": 0, "target": None}, "has no target None"),
        ({"task": "name_conversion-s2f", "idx": 0, "split": "dev"}, "pass --split dev"),
        ({"task": "name_conversion-s2f", "idx": "zero"}, "'idx' must be a non-negative integer"),
    ],
)
def test_a_line_naming_an_unknown_question_is_an_error_naming_the_line(
    tmp_path: Path, release: Path, bad: dict[str, Any], message: str
) -> None:
    good = {"task": "name_conversion-s2f", "split": "test", "idx": 0, "target": None, "pred": "x"}
    path = write_lines(tmp_path / "p.jsonl", [good, good, {**good, **bad}])
    result = score(str(path), "--data", str(release))
    assert result.exit_code == 2
    assert f"{path}:3:" in result.stderr and message in result.stderr.replace("\n", "")


def test_data_that_is_not_a_dataset_is_an_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [{"task": "t", "split": "test", "idx": 0, "target": None, "pred": ""}])
    (tmp_path / "empty").mkdir()
    result = score(str(path), "--data", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "expected one of" in result.stderr.replace("\n", "")


def test_baselines_read_training_answers_task_by_task(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    release = write_release(tmp_path)  # its own copy: the module's release stays intact
    bad = release / "data" / "raw" / "train" / "property_prediction-bbbp.jsonl"
    bad.write_text("not json\n" * 3, encoding="utf-8")  # one task's train file broken: only its baseline falls back
    found = training_answers(release, ["property_prediction-esol", "property_prediction-bbbp", "retrosynthesis"])
    assert found["property_prediction-esol"].answers == ["1.10", "0.93", "-0.89"]
    assert found["retrosynthesis"].answers == ["CCO.CI"]
    assert "property_prediction-bbbp" not in found
    assert "no training answers for the baseline of property_prediction-bbbp" in caplog.text
    assert f"{bad}:1" in caplog.text


def test_test_subset_questions_take_gold_answers_from_the_whole_test_split(tmp_path: Path) -> None:
    release = write_release(tmp_path)
    sample_file = release / "data" / "sample" / "instruction_tuning" / "test_subset" / "retrosynthesis.json"
    samples = json.loads(sample_file.read_text())
    samples["samples"] = [{"idx": 0, "template_id": 0}]  # the product's second reactant set (idx 1) is not in it
    sample_file.write_text(json.dumps(samples))
    other = load_records(release, "test", ["retrosynthesis"])[1]["raw_output"]
    question = load_records(release, "test_subset", ["retrosynthesis"])[0]
    assert other != question["raw_output"]
    path = write_lines(tmp_path / "p.jsonl", [line(question, f"<SMILES> {other} </SMILES>", "test_subset")])
    result = score(str(path), "--data", str(release), "--split", "test_subset")
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["tasks"]["retrosynthesis"]
    assert entry["n"] == 1 and entry["metrics"]["exact_match"]["value"] == 1.0  # as LlaSMol, which reads test's golds
