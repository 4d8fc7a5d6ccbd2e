"""Scores of formula and IUPAC-name answers (name conversion I2F, S2F, S2I), as LlaSMol's
`calculate_formula_metrics` defines them (`utils/metrics.py`).

- formulas: `element_match` (and `element_match_topK`): an answer within the
  first K has the same element counts as a gold answer (`count_element_match`,
  with `formulas.element_counts`); `invalid` and `no_answer`: shares of
  questions whose first answer does not read as a formula, or is missing.
- IUPAC names: `split_match` (and `split_match_topK`): the answer's ";"-separated
  parts, sorted, equal a gold answer's (`judge_string_split_match`, no other
  normalisation: case and spaces count); `no_answer` as above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedhpc.chem.formulas import canonical_formula, element_counts
from fedhpc.chem.ranked import first_rank, share, top_k_shares
from fedhpc.errors import DataError


def _clean_golds(task: str, question: int, golds: Sequence[str]) -> list[str]:
    cleaned = [gold.strip() for gold in golds]
    if not cleaned or any(not gold for gold in cleaned):
        raise DataError(f"{task}: question {question} has an empty gold answer: {list(golds)}")
    return cleaned


def formula_columns(
    task: str, cores: Sequence[Sequence[str | None]], golds: Sequence[Sequence[str]], *, lenient: bool
) -> dict[str, np.ndarray]:
    """Per question: `match_rank`, and whether the first answer is missing (`no_answer`) or `invalid`."""
    parse: Callable[[str], Any] = canonical_formula if lenient else element_counts
    n = len(cores)
    cols = {"no_answer": np.zeros(n, dtype=bool), "invalid": np.zeros(n, dtype=bool), "match_rank": np.zeros(n, int)}
    for i, (answers, gold_texts) in enumerate(zip(cores, golds, strict=True)):
        gold_counts = []
        for gold in _clean_golds(task, i, gold_texts):
            counts = parse(gold)
            if counts is None:
                raise DataError(f"{task}: question {i}: gold answer {gold!r} is not a molecular formula")
            gold_counts.append(counts)
        parsed = [None if core is None else parse(core) for core in answers]
        cols["no_answer"][i] = not answers or answers[0] is None
        cols["invalid"][i] = bool(answers) and answers[0] is not None and parsed[0] is None
        cols["match_rank"][i] = first_rank(p is not None and p in gold_counts for p in parsed)
    return cols


def formula_summary(cols: dict[str, np.ndarray], idx: np.ndarray, top_k: int) -> dict[str, float]:
    """Element match within the top k, and the invalid and no-answer shares of the first answers."""
    result = top_k_shares("element_match", cols["match_rank"][idx], top_k)
    result.update({"invalid": share(cols["invalid"][idx]), "no_answer": share(cols["no_answer"][idx])})
    return result


def split_key(name: str) -> tuple[str, ...]:
    """LlaSMol's comparison key of an IUPAC answer: its ";"-separated parts, sorted."""
    return tuple(sorted(name.split(";")))


def iupac_columns(
    task: str, cores: Sequence[Sequence[str | None]], golds: Sequence[Sequence[str]]
) -> dict[str, np.ndarray]:
    """Per question: `match_rank`, and whether the first answer is missing (`no_answer`)."""
    n = len(cores)
    cols = {"no_answer": np.zeros(n, dtype=bool), "match_rank": np.zeros(n, int)}
    for i, (answers, gold_texts) in enumerate(zip(cores, golds, strict=True)):
        keys = {split_key(gold) for gold in _clean_golds(task, i, gold_texts)}
        cols["no_answer"][i] = not answers or answers[0] is None
        cols["match_rank"][i] = first_rank(core is not None and split_key(core) in keys for core in answers)
    return cols


def iupac_summary(cols: dict[str, np.ndarray], idx: np.ndarray, top_k: int) -> dict[str, float]:
    """Split match within the top k, and the no-answer share of the first answers."""
    result = top_k_shares("split_match", cols["match_rank"][idx], top_k)
    result["no_answer"] = share(cols["no_answer"][idx])
    return result
