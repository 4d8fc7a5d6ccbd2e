"""Scoring generated answers the way LlaSMol scores SMolInstruct (Yu et al. 2024, arXiv:2402.09391).

Two steps, so that bootstrap intervals stay cheap:

- `prepare(task, preds, golds)` does all the costly work once: cutting each
  answer out of its text (`extraction.extract_answer`, LlaSMol's strict rule
  unless `lenient=True`), reading it (RDKit canonicalisation and InChI,
  fingerprints, formula counts, numbers, tokenising captions) and comparing it
  with the question's gold answers;
- `aggregate(prepared, indices)` turns per-question columns into the task's
  metrics over any selection of questions (with repeats, for resampling),
  with plain array arithmetic.

Each task belongs to a *family* that fixes its metrics (see `molecule_scores`,
`name_scores`, `label_scores`, `text_metrics` for the definitions and the LlaSMol
function each follows). `preds[i]` holds question i's answers in rank order
(several for LlaSMol's beam-search "top-k"); families with one answer per
question (numbers, yes/no, captions) score the first and ignore the rest, as
LlaSMol's single-sequence settings do. A question without any answer (an empty
list) counts as "no answer". Undefined values are NaN, never 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedhpc.chem.extraction import extract_answer, extract_core
from fedhpc.chem.formulas import canonical_formula
from fedhpc.chem.label_scores import (
    boolean_columns,
    boolean_summary,
    number_columns,
    number_summary,
    parse_boolean,
    parse_number,
)
from fedhpc.chem.molecule_scores import smiles_columns, smiles_summary
from fedhpc.chem.name_scores import formula_columns, formula_summary, iupac_columns, iupac_summary
from fedhpc.chem.tasks import BOOLEAN_TAGS, FORMULA_TAGS, NUMBER_TAGS, SMILES_TAGS, TASKS
from fedhpc.chem.text_metrics import caption_columns, caption_summary
from fedhpc.errors import DataError

logger = logging.getLogger(__name__)

Family = Literal["smiles", "formula", "iupac", "number", "boolean", "text"]
IUPAC_TAGS = ("<IUPAC>", "</IUPAC>")
SELFIES_TAG = "<SELFIES>"

#: LlaSMol's 14 tasks (`config.py`: `TASKS`, `TASK_TAGS`) and the family of their answers.
LLASMOL_TASKS: dict[str, tuple[Family, tuple[str | None, str | None]]] = {
    "forward_synthesis": ("smiles", SMILES_TAGS),
    "retrosynthesis": ("smiles", SMILES_TAGS),
    "molecule_captioning": ("text", (None, None)),
    "molecule_generation": ("smiles", SMILES_TAGS),
    "name_conversion-i2f": ("formula", FORMULA_TAGS),
    "name_conversion-i2s": ("smiles", SMILES_TAGS),
    "name_conversion-s2f": ("formula", FORMULA_TAGS),
    "name_conversion-s2i": ("iupac", IUPAC_TAGS),
    "property_prediction-esol": ("number", NUMBER_TAGS),
    "property_prediction-lipo": ("number", NUMBER_TAGS),
    "property_prediction-bbbp": ("boolean", BOOLEAN_TAGS),
    "property_prediction-clintox": ("boolean", BOOLEAN_TAGS),
    "property_prediction-hiv": ("boolean", BOOLEAN_TAGS),
    "property_prediction-sider": ("boolean", BOOLEAN_TAGS),
}
#: LlaSMol scores reactant sets of these tasks by overlap too (`compute_metrics.py`: "multiple_match").
MULTIPLE_MATCH_TASKS = frozenset({"retrosynthesis"})
FAMILY_BY_KIND: dict[str, Family] = {"formula": "formula", "regression": "number", "classification": "boolean"}
FAMILY_BY_TAG: dict[str, Family] = {
    SMILES_TAGS[0]: "smiles",
    FORMULA_TAGS[0]: "formula",
    IUPAC_TAGS[0]: "iupac",
    NUMBER_TAGS[0]: "number",
    BOOLEAN_TAGS[0]: "boolean",
}
#: Each family's headline metric (the one LlaSMol's paper reports first) and whether higher is better.
PRIMARY: dict[Family, tuple[str, bool]] = {
    "smiles": ("exact_match", True),
    "formula": ("element_match", True),
    "iupac": ("split_match", True),
    "number": ("rmse", False),
    "boolean": ("accuracy", True),
    "text": ("meteor", True),
}
RANKED_FAMILIES = frozenset({"smiles", "formula", "iupac"})

__all__ = [
    "PreparedTask",
    "aggregate",
    "answer_tags",
    "canonical_formula",
    "extract_core",
    "parse_boolean",
    "parse_number",
    "prepare",
    "primary_metric",
    "score_task",
    "task_family",
]


def task_family(task: str, record: Mapping[str, Any] | None = None) -> Family:
    """The family of `task`'s answers: LlaSMol's tasks and ours by name, any other by `record`'s output core tag.

    SELFIES answers (a `--selfies` build) are refused here, before anything is generated: LlaSMol's metrics
    read SMILES, and a SELFIES string read as SMILES would only ever count as invalid.
    """
    if (record or {}).get("output_core_tag_left") == SELFIES_TAG:
        raise DataError(
            f"task {task!r}: its answers are SELFIES (<SELFIES> tags: data built with --selfies), which fedhpc "
            "cannot score; LlaSMol's metrics read SMILES, so evaluate on data built without --selfies"
        )
    if task in LLASMOL_TASKS:
        return LLASMOL_TASKS[task][0]
    if task in TASKS:
        return FAMILY_BY_KIND[TASKS[task].kind]
    tag = (record or {}).get("output_core_tag_left")
    if tag in FAMILY_BY_TAG:
        return FAMILY_BY_TAG[tag]
    known = sorted({*LLASMOL_TASKS, *TASKS})
    raise DataError(
        f"task {task!r} is not one fedhpc can score: its output core tag {tag!r} is none of "
        f"{sorted(FAMILY_BY_TAG)}; known tasks: {known}"
    )


def answer_tags(task: str, record: Mapping[str, Any] | None = None) -> tuple[str | None, str | None]:
    """The output core tags answers of `task` are cut out between (both None: the whole text)."""
    if task in LLASMOL_TASKS:
        return LLASMOL_TASKS[task][1]
    if task in TASKS:
        return TASKS[task].output_tags
    record = record or {}
    return record.get("output_core_tag_left"), record.get("output_core_tag_right")


def primary_metric(task: str, record: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """(metric name, higher is better) of the number that stands for `task`."""
    return PRIMARY[task_family(task, record)]


@dataclass(frozen=True)
class PreparedTask:
    """One task's answers, read and compared once; `aggregate` makes metrics of any selection of its questions.

    `columns` hold one row per question. `top_k` is the most answers any
    question has (1 for one-answer families). `notes` say why a metric is NaN
    for want of a resource, e.g. `{"meteor_unavailable": "WordNet is not installed ..."}`.
    """

    task: str
    family: Family
    n: int
    top_k: int
    lenient: bool
    columns: Mapping[str, np.ndarray]
    notes: Mapping[str, str] = field(default_factory=dict)


def prepare(
    task: str,
    preds: Sequence[Sequence[str]],
    golds: Sequence[Sequence[str]],
    *,
    record: Mapping[str, Any] | None = None,
    lenient: bool = False,
) -> PreparedTask:
    """Read and compare every answer of `task`: `preds[i]` are question i's generated texts, `golds[i]` its
    gold raw answers. `record` is any record of the task (its core tags decide for unknown tasks)."""
    if len(preds) != len(golds):
        raise ValueError(f"{task}: {len(preds)} questions answered but {len(golds)} have gold answers")
    for i, gold in enumerate(golds):
        if not gold:
            raise DataError(f"{task}: question {i} has no gold answer")
    family = task_family(task, record)
    left, right = answer_tags(task, record)
    cores = [[extract_answer(text, left, right, lenient=lenient) for text in answers] for answers in preds]
    top_k = max((len(answers) for answers in cores), default=1) if family in RANKED_FAMILIES else 1
    top_k = max(top_k, 1)
    notes: dict[str, str] = {}
    if family == "smiles":
        columns = smiles_columns(task, cores, golds, multiple_match=task in MULTIPLE_MATCH_TASKS)
    elif family == "formula":
        columns = formula_columns(task, cores, golds, lenient=lenient)
    elif family == "iupac":
        columns = iupac_columns(task, cores, golds)
    else:
        firsts = _first_answers(task, cores)
        if family == "number":
            columns = number_columns(task, firsts, golds, lenient=lenient)
        elif family == "boolean":
            columns = boolean_columns(task, firsts, golds, lenient=lenient)
        else:
            columns, notes = caption_columns(firsts, [_caption_gold(task, i, g) for i, g in enumerate(golds)])
    return PreparedTask(task, family, len(preds), top_k, lenient, columns, notes)


def _first_answers(task: str, cores: list[list[str | None]]) -> list[str | None]:
    extra = sum(1 for answers in cores if len(answers) > 1)
    if extra:
        logger.warning("%s: %d questions have several answers; only the first of each is scored", task, extra)
    return [answers[0] if answers else None for answers in cores]


def _caption_gold(task: str, question: int, golds: Sequence[str]) -> str:
    """LlaSMol scores a caption against one gold caption: the question's first (its own `raw_output`)."""
    gold = golds[0].strip()
    if not gold:
        raise DataError(f"{task}: question {question} has an empty gold caption")
    return gold


def aggregate(prepared: PreparedTask, indices: Sequence[int] | None = None) -> dict[str, float]:
    """The task's metrics over the questions at `indices` (all when None; repeats count again), with "n"."""
    idx = np.arange(prepared.n) if indices is None else np.asarray(indices, dtype=np.intp).reshape(-1)
    cols = dict(prepared.columns)
    if prepared.family == "smiles":
        metrics = smiles_summary(cols, idx, prepared.top_k)
    elif prepared.family == "formula":
        metrics = formula_summary(cols, idx, prepared.top_k)
    elif prepared.family == "iupac":
        metrics = iupac_summary(cols, idx, prepared.top_k)
    elif prepared.family == "number":
        metrics = number_summary(cols, idx)
    elif prepared.family == "boolean":
        metrics = boolean_summary(cols, idx)
    else:
        metrics = caption_summary(cols, idx)
    return {"n": float(len(idx)), **metrics}


def score_task(
    task: str,
    preds: Sequence[Sequence[str]],
    golds: Sequence[Sequence[str]],
    *,
    record: Mapping[str, Any] | None = None,
    lenient: bool = False,
) -> dict[str, float | str]:
    """`aggregate(prepare(...))`: the task's metrics over all its questions, plus the prepared task's notes.

    A metric that is NaN for want of a resource comes with a `<metric>_unavailable`
    key whose value (a string) says why and how to install it.
    """
    prepared = prepare(task, preds, golds, record=record, lenient=lenient)
    return {**aggregate(prepared), **prepared.notes}
