"""`fedhpc score`: score a predictions file against a dataset split, without a model.

The questions are the ones the file answers, in the order of their first line;
the dataset (the SMolInstruct release or a built dataset) supplies each
question's gold answers and the training split the baselines need. Scores are
those of `fedhpc eval` on the same answers: the same scorer, baselines and
resamples.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedhpc.chem.smolinstruct import canonical_split, load_records
from fedhpc.errors import DataError
from fedhpc.evaluation.predictions import Prediction, read_predictions
from fedhpc.evaluation.results import gold_records, samples, score_questions, training_answers

Question = tuple[str, int, str | None]


def score_predictions(path: Path, data: Path, split: str = "test", *, lenient: bool = False) -> dict[str, Any]:
    """The results document (round null, decoding null) of the answers in `path` to `split` of `data`.

    `DataError` names the line of a prediction for another split, an unknown task
    or an unknown (idx, target) of a known task.
    """
    started = time.time()
    split = canonical_split(split)
    predictions = read_predictions(path)
    for p in predictions:
        if canonical_split(p.split) != split:
            raise DataError(f"{path}:{p.line}: a prediction for split {p.split!r}, but scoring split {split!r}; "
                            f"pass --split {p.split}")
    records = _split_records(path, data, split, predictions)
    by_question = {(str(r["task"]), int(r["idx"]), r.get("target")): r for r in records}
    questions: dict[Question, list[str]] = {}
    for p in predictions:
        if p.question not in by_question:
            raise DataError(f"{path}:{p.line}: {_unknown(p, records)} in the {split} split of {data}")
        questions.setdefault(p.question, []).append(p.pred)
    chosen = [by_question[q] for q in questions]
    answers = list(questions.values())
    names = sorted({q[0] for q in questions})
    golds = gold_records(data, split, names, records)
    tasks = score_questions(chosen, answers, golds, training_answers(data, names), lenient=lenient)
    return {
        "round": None,
        "data": str(data),
        "split": split,
        "examples": len(chosen),
        "seconds": round(time.time() - started, 2),
        "lenient": lenient,
        "decoding": None,
        "tasks": tasks,
        "samples": samples(chosen, answers),
    }


def _split_records(path: Path, data: Path, split: str, predictions: list[Prediction]) -> list[dict[str, Any]]:
    """The split's records of every task the file names; a task the data lacks is an error at its first line."""
    wanted = sorted({p.task for p in predictions})
    try:
        records = load_records(data, split=split, tasks=wanted)
    except DataError:
        # None of the tasks is there; reading the whole split says whether the data itself is at fault.
        records = [r for r in load_records(data, split=split) if r["task"] in wanted]
    present = {r["task"] for r in records}
    for p in predictions:
        if p.task not in present:
            raise DataError(f"{path}:{p.line}: unknown task {p.task!r}: the {split} split of {data} has no record "
                            f"of it")
    return records


def _unknown(p: Prediction, records: list[dict[str, Any]]) -> str:
    ids = sorted({int(r["idx"]) for r in records if r["task"] == p.task})
    targets = sorted({r["target"] for r in records if r["task"] == p.task and r["idx"] == p.idx}, key=str)
    if targets:
        return f"task {p.task!r} idx {p.idx} has no target {p.target!r} (its targets: {targets})"
    span = f"{len(ids)} questions, idx {ids[0]}..{ids[-1]}" if ids else "no questions"
    return f"unknown idx {p.idx} of task {p.task!r} ({span})"
