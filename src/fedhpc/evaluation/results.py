"""Score answered questions into the results document that `fedhpc eval` writes and `fedhpc score` prints.

Per task: every metric of `fedhpc.chem.metrics` with a 95% bootstrap interval,
`n`, the trivial baseline's name and metrics on the same questions with the same
resamples, and whether the primary metric beats the baseline (intervals apart).
The document (docs/chem-eval.md, "Baselines and intervals"):

    {"round": int | null, "data": str, "split": str, "examples": int, "seconds": float, "lenient": bool,
     "decoding": {"num_beams": int, "max_new_tokens": {task: int}} | null,
     "tasks": {task: {"n", "primary", "higher_is_better", "metrics": {metric: {"value", "ci95"}},
                      "baseline": {"name", "metrics"}, "beats_baseline", "notes"?}},
     "samples": [{"task", "input", "reference", "prediction"}, ...]}

`decoding` is null where nothing was generated here (`fedhpc score`). `notes`
appears only where a metric is null for want of a resource
(`{"meteor_unavailable": "<why, and how to install it>"}`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedhpc.chem.baselines import TrainingAnswers, choose_baseline
from fedhpc.chem.bootstrap import RESAMPLES, SEED, Estimate, as_json, beats, paired_estimates
from fedhpc.chem.metrics import aggregate, prepare, primary_metric
from fedhpc.chem.smolinstruct import iter_records, load_records
from fedhpc.errors import DataError

log = logging.getLogger(__name__)

#: Tasks whose questions may have several correct answers, all read from the split's records that share the
#: question's input (and target): LlaSMol's `config.py`, TASKS_WITH_READING_GOLD_FROM_DATASET.
GOLD_FROM_DATASET = frozenset(
    {
        "forward_synthesis",
        "retrosynthesis",
        "molecule_generation",
        "molecule_captioning",
        "name_conversion-i2f",
        "name_conversion-i2s",
        "name_conversion-s2f",
        "name_conversion-s2i",
    }
)

Record = Mapping[str, Any]


def gold_answers(task: str, questions: Sequence[Record], split_records: Sequence[Record]) -> list[list[str]]:
    """Each question's gold answers: its own `raw_output` first, then, for `GOLD_FROM_DATASET` tasks, every
    other distinct `raw_output` of `split_records` of the task with the same `raw_input` and `target`."""
    others: dict[tuple[Any, Any], set[str]] = defaultdict(set)
    if task in GOLD_FROM_DATASET:
        for record in split_records:
            if record["task"] == task and record.get("raw_output") is not None:
                others[(record["raw_input"], record.get("target"))].add(str(record["raw_output"]))
    golds = []
    for question in questions:
        own = question.get("raw_output")
        if own is None:
            raise DataError(f"question {task} idx {question.get('idx')} has no gold answer (raw_output) to score")
        rest = others.get((question["raw_input"], question.get("target")), set()) - {str(own)}
        golds.append([str(own), *sorted(rest)])
    return golds


def gold_records(data: Path, split: str, tasks: Sequence[str], split_records: Sequence[Record]) -> Sequence[Record]:
    """The records whose answers are gold for questions of `split`: the split's own, except for `test_subset`.

    `test_subset` questions take theirs from the whole `test` split, as LlaSMol's
    `compute_metrics.py` does (it reads the gold answers of the full test split
    whichever samples were answered): a product whose second reactant set is
    outside the subset still accepts it. Data without a `test` split keeps the subset's.
    """
    several = [task for task in tasks if task in GOLD_FROM_DATASET]
    if split != "test_subset" or not several:
        return split_records
    try:
        return load_records(data, "test", several)
    except DataError as e:
        log.warning("gold answers of %s from its test_subset only: %s", data, e)
        return split_records


def training_answers(data: Path, tasks: Sequence[str]) -> dict[str, TrainingAnswers]:
    """The training split's gold answers of each of `tasks` under `data`.

    Read task by task and streamed, keeping only the answers: the release's
    train split holds over three million records, and `fedhpc eval` reads it
    again at every evaluated round. A task without training records is left out:
    its baseline then falls back to the evaluated answers and says so in its name.
    """
    found: dict[str, TrainingAnswers] = {}
    for task in tasks:
        try:
            records = iter_records(data, "train", [task])
            answers = [str(r["raw_output"]) for r in records if r.get("raw_output") is not None]
        except DataError as e:
            log.warning("no training answers for the baseline of %s: %s", task, e)
            continue
        if answers:
            found[task] = TrainingAnswers(answers)
        else:
            log.warning("no training answers for the baseline of %s in %s", task, data)
    return found


def score_task(
    task: str,
    questions: Sequence[Record],
    answers: Sequence[Sequence[str]],
    golds: Sequence[Sequence[str]],
    train: TrainingAnswers | None,
    *,
    lenient: bool = False,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """One task's entry of the results document; `answers[i]` are the generated texts answering `questions[i]`."""
    record = questions[0] if questions else None
    prepared = prepare(task, answers, golds, record=record, lenient=lenient)
    baseline = choose_baseline(task, questions, golds, train, lenient=lenient)
    model, base = paired_estimates(prepared, baseline.prepared, len(questions), resamples, seed)
    metric, higher = primary_metric(task, record)
    undefined = Estimate(float("nan"), None)
    entry = {
        "n": int(aggregate(prepared)["n"]),
        "primary": metric,
        "higher_is_better": higher,
        "metrics": as_json(model),
        "baseline": {"name": baseline.name, "metrics": as_json(base)},
        "beats_baseline": beats(model.get(metric, undefined), base.get(metric, undefined), higher),
    }
    if prepared.notes:  # a metric is null for want of a resource: say which, why, and how to install it
        entry["notes"] = dict(prepared.notes)
    return entry


def score_questions(
    questions: Sequence[Record],
    answers: Sequence[Sequence[str]],
    split_records: Sequence[Record],
    train: Mapping[str, TrainingAnswers],
    *,
    lenient: bool = False,
) -> dict[str, dict[str, Any]]:
    """`score_task` for every task among `questions`, keyed by task name in sorted order.

    `split_records` are the records whose answers are gold (`gold_records`: the
    whole evaluated split, or the test split for `test_subset`); questions keep
    their given order within a task, which fixes the resamples.
    """
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, question in enumerate(questions):
        by_task[str(question["task"])].append(i)
    results = {}
    for task in sorted(by_task):
        chosen = [questions[i] for i in by_task[task]]
        results[task] = score_task(
            task,
            chosen,
            [answers[i] for i in by_task[task]],
            gold_answers(task, chosen, split_records),
            train.get(task),
            lenient=lenient,
        )
    return results


def samples(questions: Sequence[Record], answers: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """The first question of each task with its first answer, for a reader to eyeball."""
    seen: set[str] = set()
    shown = []
    for question, answered in zip(questions, answers, strict=True):
        if question["task"] in seen or not answered:
            continue
        seen.add(question["task"])
        shown.append(
            {
                "task": str(question["task"]),
                "input": str(question["input"]),
                "reference": str(question["output"]),
                "prediction": answered[0],
            }
        )
    return shown
