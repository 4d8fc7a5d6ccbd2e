"""The predictions file `fedhpc eval` writes and `fedhpc score` reads: round trip and line-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhpc.errors import DataError
from fedhpc.evaluation.predictions import Prediction, predictions_path, read_predictions, write_predictions


def test_predictions_sit_beside_the_results_file() -> None:
    assert predictions_path(Path("run/eval/r0003.json")) == Path("run/eval/r0003.predictions.jsonl")


def test_written_predictions_read_back_in_order_with_line_numbers(tmp_path: Path) -> None:
    answers = [
        Prediction("property_prediction-sider", "test", 4, "Cardiac disorders", " <BOOLEAN> Yes </BOOLEAN>"),
        Prediction("name_conversion-s2f", "test", 0, None, "The formula is <MOLFORMULA> CH₄ </MOLFORMULA> .\n"),
        Prediction("name_conversion-s2f", "test", 0, None, ""),
    ]
    path = tmp_path / "eval" / "r0001.predictions.jsonl"
    write_predictions(path, answers)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"task": "property_prediction-sider", "split": "test", "idx": 4,
                                    "target": "Cardiac disorders", "pred": " <BOOLEAN> Yes </BOOLEAN>"}  # fmt: skip
    assert "CH₄" in lines[1]  # unescaped UTF-8, as the generated text was
    back = read_predictions(path)
    assert [(p.question, p.pred, p.line) for p in back] == [(a.question, a.pred, i) for i, a in enumerate(answers, 1)]
    assert [p.name for p in tmp_path.joinpath("eval").iterdir()] == ["r0001.predictions.jsonl"]  # no temp file left


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON"),
        ('["a list"]', "not a JSON object"),
        ('{"task": "t", "split": "test", "idx": 1, "target": null}', "'pred' is missing"),
        ('{"task": "t", "split": "test", "idx": "3", "target": null, "pred": ""}', "'idx' must be a non-negative"),
        ('{"task": "t", "split": "test", "idx": -1, "target": null, "pred": ""}', "'idx' must be a non-negative"),
        ('{"task": "t", "split": "test", "idx": true, "target": null, "pred": ""}', "'idx' must be a non-negative"),
        ('{"task": "t", "split": "test", "idx": 1, "target": 7, "pred": ""}', "'target' must be a string or null"),
        ('{"task": "t", "split": "test", "idx": 1, "target": null, "pred": ["a"]}', "'pred' must be the generated"),
        ('{"task": "", "split": "test", "idx": 1, "target": null, "pred": ""}', "'task' must be a task name"),
    ],
)
def test_a_malformed_line_is_an_error_naming_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    good = '{"task": "t", "split": "test", "idx": 0, "target": null, "pred": "x"}'
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_predictions(path)
    assert f"{path}:3:" in str(caught.value) and message in str(caught.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no predictions"):
        read_predictions(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="cannot read"):
        read_predictions(tmp_path / "missing.jsonl")
