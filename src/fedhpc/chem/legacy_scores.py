"""The scorer fedhpc had before LlaSMol's definitions: tolerant extraction, three task kinds.

Kept only while callers move to `metrics.prepare` / `metrics.aggregate`: `score`
and `score_all` return `n`, `unparseable` (a share) and `exact_match` (formulas),
`accuracy` (yes/no) or `rmse` and `mae` (numbers), all with the tolerant reading
(`extraction.extract_core`, `formulas.canonical_formula`,
`label_scores.parse_number` / `parse_boolean`). New code should not use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedhpc.chem.extraction import extract_core
from fedhpc.chem.formulas import canonical_formula
from fedhpc.chem.label_scores import parse_boolean, parse_number
from fedhpc.chem.tasks import KIND_BY_OUTPUT_TAG, RELEASE_TASK_KINDS, TASKS, TaskKind
from fedhpc.errors import DataError

logger = logging.getLogger(__name__)


def task_kind(task: str, record: Mapping[str, Any] | None = None) -> TaskKind:
    """"formula", "regression" or "classification" for one of our tasks or the release's scorable ones.

    For any other task name, the output core tag of `record` decides
    (`<MOLFORMULA>`, `<NUMBER>`, `<BOOLEAN>`); without one, `DataError`.
    """
    if task in TASKS:
        return TASKS[task].kind
    if task in RELEASE_TASK_KINDS:
        return RELEASE_TASK_KINDS[task]
    tag = (record or {}).get("output_core_tag_left")
    if tag in KIND_BY_OUTPUT_TAG:
        return KIND_BY_OUTPUT_TAG[tag]
    known = sorted({*TASKS, *RELEASE_TASK_KINDS})
    raise DataError(f"task {task!r} has no formula, number or yes/no answer to score; scorable tasks: {known}")


def _tags(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    left, right = record.get("output_core_tag_left"), record.get("output_core_tag_right")
    spec = TASKS.get(str(record.get("task")))
    if left is None and spec is not None:
        left, right = spec.output_tags
    return left, right


def _reference(record: Mapping[str, Any]) -> str:
    raw = record.get("raw_output")
    if raw is None:
        left, right = _tags(record)
        raw = extract_core(str(record.get("output", "")), left, right)
    if raw is None:
        raise DataError(f"reference record {record.get('sample_id') or record.get('input')!r} has no answer to score")
    return str(raw)


def _parse(kind: TaskKind, core: str | None) -> Any:
    if kind == "formula":
        return None if core is None else canonical_formula(core)
    if kind == "regression":
        return parse_number(core)
    return parse_boolean(core)


def score(task: str, predictions: Sequence[str], references: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Metrics of one task: see the module docstring for keys. `references` are records of `task`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    kind = task_kind(task, references[0] if references else None)
    n = len(predictions)
    preds, golds = [], []
    for prediction, record in zip(predictions, references, strict=True):
        left, right = _tags(record)
        preds.append(_parse(kind, extract_core(prediction, left, right)))
        gold = _parse(kind, _reference(record))
        if gold is None:
            raise DataError(f"reference answer {_reference(record)!r} of task {task!r} is not a valid {kind} answer")
        golds.append(gold)
    unparseable = sum(p is None for p in preds)
    result = {"n": float(n), "unparseable": unparseable / n if n else math.nan}
    if kind == "regression":
        errors = [p - g for p, g in zip(preds, golds, strict=True) if p is not None]
        result["rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else math.nan
        result["mae"] = sum(abs(e) for e in errors) / len(errors) if errors else math.nan
    else:
        correct = sum(p is not None and p == g for p, g in zip(preds, golds, strict=True))
        result["exact_match" if kind == "formula" else "accuracy"] = correct / n if n else math.nan
    return result


def score_all(predictions: Sequence[str], references: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """`score` per task over a mix of tasks, keyed by task name in sorted order.

    Records of tasks with nothing to score this way (SMILES or text answers) are
    skipped with a warning rather than failing a whole evaluation.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(references):
        groups.setdefault(str(record["task"]), []).append(i)
    scores: dict[str, dict[str, float]] = {}
    for task in sorted(groups):
        idx = groups[task]
        try:
            task_kind(task, references[idx[0]])
        except DataError:
            logger.warning("not scoring %d answers of task %s: no formula, number or yes/no answer", len(idx), task)
            continue
        scores[task] = score(task, [predictions[i] for i in idx], [references[i] for i in idx])
    return scores
