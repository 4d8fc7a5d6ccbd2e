"""The predictions file: one generated answer per line, addressed to a question of a dataset split.

    {"task": "name_conversion-s2f", "split": "test", "idx": 17, "target": null, "pred": "<raw generated text>"}

`idx` is the question's `idx` in the dataset (for the SMolInstruct release its
line in `raw/<split>/<task>.jsonl`; for a built dataset its position in
`<split>/<task>.jsonl`), and `target` names the output key of dict outputs
(SIDER's side effects), else null. Several lines for the same question are
several answers to it (LlaSMol's beam returns), kept in file order. `fedhpc eval`
writes this file beside its scores; `fedhpc score` reads it, so predictions
made anywhere can be scored the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedhpc.atomic_files import atomic_write_text
from fedhpc.errors import DataError
from fedhpc.json_lines import read_json_lines

FIELDS = ("task", "split", "idx", "target", "pred")
FORMAT = (
    'each line must be a JSON object {"task": str, "split": str, "idx": int, "target": str or null, '
    '"pred": str}'
)


@dataclass(frozen=True)
class Prediction:
    """One answer to question (task, split, idx, target); `line` is its 1-based line in the file, for errors."""

    task: str
    split: str
    idx: int
    target: str | None
    pred: str
    line: int = 0

    @property
    def question(self) -> tuple[str, int, str | None]:
        """(task, idx, target): what identifies the question; lines sharing it are several answers to it."""
        return self.task, self.idx, self.target

    def as_json(self) -> dict[str, str | int | None]:
        """The file's line for this answer (without `line`, which is where it was read from)."""
        return {"task": self.task, "split": self.split, "idx": self.idx, "target": self.target, "pred": self.pred}


def predictions_path(scores_path: Path) -> Path:
    """Where the predictions behind `scores_path` go: `eval/r0003.json` -> `eval/r0003.predictions.jsonl`."""
    return scores_path.with_suffix(".predictions.jsonl")


def write_predictions(path: Path, predictions: Iterable[Prediction]) -> None:
    """Write one line per answer, replacing `path` atomically (a reader never sees half a file).

    The answers are all in memory already (`evaluate_chem` returns them as one
    list), so building the file as one string only adds a copy of that size.
    """
    lines = (json.dumps(prediction.as_json(), ensure_ascii=False) + "\n" for prediction in predictions)
    atomic_write_text(path, "".join(lines), make_parents=True)


def read_predictions(path: Path) -> list[Prediction]:
    """Every answer in `path`, in file order; `DataError` names the file and line of a malformed one."""
    predictions = [_prediction(item, path, number) for number, item in read_json_lines(path, FORMAT)]
    if not predictions:
        raise DataError(f"{path}: no predictions; {FORMAT}")
    return predictions


def _prediction(item: object, path: Path, number: int) -> Prediction:
    if not isinstance(item, dict):
        raise DataError(f"{path}:{number}: not a JSON object; {FORMAT}")
    problems = [f"'{key}' is missing" for key in FIELDS if key not in item]
    if not problems:
        if not isinstance(item["task"], str) or not item["task"]:
            problems.append("'task' must be a task name")
        if not isinstance(item["split"], str):
            problems.append("'split' must be a string")
        if not isinstance(item["idx"], int) or isinstance(item["idx"], bool) or item["idx"] < 0:
            problems.append(f"'idx' must be a non-negative integer, got {item['idx']!r}")
        if item["target"] is not None and not isinstance(item["target"], str):
            problems.append(f"'target' must be a string or null, got {item['target']!r}")
        if not isinstance(item["pred"], str):
            problems.append(f"'pred' must be the generated text, got {item['pred']!r}")
    if problems:
        raise DataError(f"{path}:{number}: {'; '.join(problems)}; {FORMAT}")
    return Prediction(item["task"], item["split"], item["idx"], item["target"], item["pred"], number)
