"""Scores of one-answer property tasks: numbers (ESOL, Lipophilicity) and yes/no (BBBP, ClinTox, HIV, SIDER).

As LlaSMol's `calculate_number_metrics` and `calculate_boolean_metrics`
(`utils/metrics.py`): each question has one gold answer and its first answer
counts. An answer is "no answer" (nothing between the tags) or "invalid" (not a
number; not yes/no, case-insensitively after stripping) or valid.

- numbers: `rmse` over the valid answers only, with the shares `no_answer` and
  `invalid` of all questions; we add `mae` over the same answers. A valid
  number is what Python's `float` reads (so "1e3" and "1_000" are numbers, a
  Unicode minus "−1" is invalid), except that we also count "nan" and "inf" as
  invalid, where LlaSMol's RMSE would become NaN or infinite.
- yes/no: `accuracy` = correct answers / all questions (no answer and invalid
  count as wrong); `precision`, `recall`, `f1`, `mcc` and `roc_auc` over the
  valid answers only, "Yes" being the positive class. With hard yes/no answers
  the ROC curve has one threshold, so ROC-AUC is (TPR + TNR) / 2 (balanced
  accuracy), which is what scikit-learn's `roc_auc_score` gives LlaSMol; it is
  undefined when the valid answers' gold labels are all one class. Where
  scikit-learn returns 0 for an undefined value (precision with no "Yes"
  answer, MCC when a confusion-matrix margin is empty), we return NaN.
- `lenient=True` reads numbers and yes/no as `parse_number` / `parse_boolean` do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedhpc.chem.ranked import share
from fedhpc.errors import DataError

UNICODE_MINUS = "\u2212"


def strict_number(core: str) -> float | None:
    """LlaSMol's `float(answer)`, finite only."""
    try:
        value = float(core)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_number(text: str | None) -> float | None:
    """Tolerant: a finite float from the core, or None; a Unicode minus sign is read as '-'."""
    if text is None:
        return None
    return strict_number(text.replace(UNICODE_MINUS, "-"))


def strict_boolean(core: str) -> bool | None:
    """LlaSMol's reading: "yes" / "no" after stripping, any case; nothing else ("Yes." is invalid)."""
    return {"yes": True, "no": False}.get(core.strip().lower())


def parse_boolean(text: str | None) -> bool | None:
    """Tolerant: Yes -> True, No -> False (case-insensitive, trailing full stop allowed), else None."""
    if text is None:
        return None
    return strict_boolean(text.strip().rstrip("."))


def _single_gold(task: str, question: int, golds: Sequence[str]) -> str:
    if len(golds) != 1:
        raise DataError(f"{task}: question {question} needs exactly one gold answer, got {len(golds)}: {list(golds)}")
    return golds[0]


def number_columns(
    task: str, cores: Sequence[str | None], golds: Sequence[Sequence[str]], *, lenient: bool
) -> dict[str, np.ndarray]:
    """Per question: `no_answer`, `invalid`, and `error` = answer - gold (NaN unless valid)."""
    parse = parse_number if lenient else strict_number
    n = len(cores)
    cols = {"no_answer": np.zeros(n, dtype=bool), "invalid": np.zeros(n, dtype=bool), "error": np.full(n, math.nan)}
    for i, (core, gold_texts) in enumerate(zip(cores, golds, strict=True)):
        gold_text = _single_gold(task, i, gold_texts)
        gold = strict_number(gold_text.strip())
        if gold is None:
            raise DataError(f"{task}: question {i}: gold answer {gold_text!r} is not a finite number")
        value = None if core is None else parse(core)
        cols["no_answer"][i] = core is None
        cols["invalid"][i] = core is not None and value is None
        if value is not None:
            cols["error"][i] = value - gold
    return cols


def number_summary(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    """RMSE and MAE over the valid answers among `idx`, and the no-answer and invalid shares."""
    errors = cols["error"][idx]
    errors = errors[~np.isnan(errors)]
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))) if len(errors) else math.nan,
        "mae": float(np.mean(np.abs(errors))) if len(errors) else math.nan,
        "invalid": share(cols["invalid"][idx]),
        "no_answer": share(cols["no_answer"][idx]),
    }


def boolean_columns(
    task: str, cores: Sequence[str | None], golds: Sequence[Sequence[str]], *, lenient: bool
) -> dict[str, np.ndarray]:
    """Per question: `gold` (1 = yes), `answer` (1 = yes, 0 = no, -1 = no valid answer), `no_answer`, `invalid`."""
    parse = parse_boolean if lenient else strict_boolean
    n = len(cores)
    cols = {
        "gold": np.zeros(n, dtype=np.int8),
        "answer": np.full(n, -1, dtype=np.int8),
        "no_answer": np.zeros(n, dtype=bool),
        "invalid": np.zeros(n, dtype=bool),
    }
    for i, (core, gold_texts) in enumerate(zip(cores, golds, strict=True)):
        gold_text = _single_gold(task, i, gold_texts)
        gold = strict_boolean(gold_text)
        if gold is None:
            raise DataError(f"{task}: question {i}: gold answer {gold_text!r} is not Yes or No")
        value = None if core is None else parse(core)
        cols["gold"][i] = gold
        cols["no_answer"][i] = core is None
        cols["invalid"][i] = core is not None and value is None
        if value is not None:
            cols["answer"][i] = value
    return cols


def boolean_summary(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    """Accuracy over all questions `idx`; precision, recall, F1, MCC, ROC-AUC over their valid answers."""
    gold, answer = cols["gold"][idx], cols["answer"][idx]
    valid = answer >= 0
    g, a = gold[valid] == 1, answer[valid] == 1
    tp, fp = int(np.sum(g & a)), int(np.sum(~g & a))
    fn, tn = int(np.sum(g & ~a)), int(np.sum(~g & ~a))
    margins = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return {
        "accuracy": share(answer == gold),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": (tp * tn - fp * fn) / math.sqrt(margins) if margins else math.nan,
        "roc_auc": (_ratio(tp, tp + fn) + _ratio(tn, tn + fp)) / 2,
        "invalid": share(cols["invalid"][idx]),
        "no_answer": share(cols["no_answer"][idx]),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan
