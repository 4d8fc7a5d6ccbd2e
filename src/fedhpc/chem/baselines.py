"""Each task's trivial baseline: what a model that learned nothing about the molecule would score.

A score means something only beside what a constant or a copy scores on the
same questions: on a test split where 23 of 24 answers are "Yes", accuracy 0.958
is what always answering "Yes" gets. So every evaluated task is also scored for
its baseline, answered as text inside the task's output core tags (so the same
extraction and the same scorer apply), on exactly the evaluated questions:

- yes/no (family "boolean"): the better of always "Yes" and always "No" on the
  evaluated questions, i.e. the majority class (named with its answer);
- numbers ("number"): always the mean of the training split's answers; when the
  data has no training split, the mean of the evaluated answers, named so;
- generation ("smiles", "formula", "iupac", "text"): the better of echoing the
  question's input (`raw_input`) and always giving the most frequent training
  answer (without a training split: the most frequent evaluated answer, named so).

"Better" is judged on the task's primary metric over all evaluated questions; an
undefined value (NaN) loses to any defined one, and a tie keeps the candidate
listed first above.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedhpc.chem.label_scores import strict_boolean
from fedhpc.chem.metrics import PreparedTask, aggregate, answer_tags, prepare, primary_metric, task_family
from fedhpc.errors import DataError


@dataclass(frozen=True)
class Baseline:
    """The chosen baseline's name (shown in every table), its answers, and them prepared for scoring."""

    name: str
    answers: list[list[str]]
    prepared: PreparedTask


@dataclass(frozen=True)
class TrainingAnswers:
    """What the baselines need from a task's training split: its gold answers (`raw_output`) and no more."""

    answers: list[str]

    def mean(self) -> float | None:
        """Mean of the answers that read as finite numbers; None when none does."""
        numbers = [x for x in (_number(a) for a in self.answers) if x is not None]
        return sum(numbers) / len(numbers) if numbers else None

    def most_frequent(self) -> str | None:
        """The most frequent answer (ties: the first in sorted order, so the choice is reproducible)."""
        counts = Counter(a for a in self.answers if a.strip())
        if not counts:
            return None
        top = max(counts.values())
        return min(a for a, c in counts.items() if c == top)


def choose_baseline(
    task: str,
    questions: Sequence[Mapping[str, Any]],
    golds: Sequence[Sequence[str]],
    train: TrainingAnswers | None,
    *,
    lenient: bool = False,
) -> Baseline:
    """The task's baseline on `questions` (evaluated records of `task`, each with `golds[i]`).

    `train=None` means the data has no training split for this task.
    """
    record = questions[0] if questions else None
    family = task_family(task, record)
    left, right = answer_tags(task, record)
    candidates: list[tuple[str, list[str]]]
    if family == "boolean":
        yes = sum(1 for g in golds if g and strict_boolean(g[0]) is True)
        candidates = [
            (_constant_name("Yes", yes >= len(golds) - yes), ["Yes"] * len(questions)),
            (_constant_name("No", len(golds) - yes > yes), ["No"] * len(questions)),
        ]
    elif family == "number":
        mean = train.mean() if train is not None else None
        label = "training mean"
        if mean is None:
            mean, label = TrainingAnswers([g[0] for g in golds if g]).mean(), "mean of the evaluated answers"
        if mean is None:
            raise DataError(f"task {task!r}: no gold answer reads as a number, so there is no mean to answer with")
        candidates = [(f"{label} ({format(mean, '.3g')})", [format(mean, ".6g")] * len(questions))]
    else:
        frequent = train.most_frequent() if train is not None else None
        label = "most frequent training answer"
        if frequent is None:
            frequent = TrainingAnswers([g[0] for g in golds if g]).most_frequent()
            label = "most frequent evaluated answer"
        candidates = [("echo input", [str(q.get("raw_input", "")) for q in questions])]
        if frequent is not None:
            candidates.append((label, [frequent] * len(questions)))
    metric, higher = primary_metric(task, record)
    best: Baseline | None = None
    best_value = math.nan
    for name, cores in candidates:
        answers = [[_tagged(left, core, right)] for core in cores]
        prepared = prepare(task, answers, golds, record=record, lenient=lenient)
        value = float(aggregate(prepared).get(metric, math.nan))
        if best is None or _better(value, best_value, higher):
            best, best_value = Baseline(name, answers, prepared), value
    assert best is not None  # every family lists at least one candidate
    return best


def _constant_name(answer: str, majority: bool) -> str:
    return f"majority class ({answer})" if majority else f"always {answer} (minority class)"


def _better(value: float, incumbent: float, higher: bool) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(incumbent):
        return True
    return value > incumbent if higher else value < incumbent


def _tagged(left: str | None, core: str, right: str | None) -> str:
    """The answer as SMolInstruct writes it: `<TAG> core </TAG>`, or bare for untagged tasks."""
    return core if left is None else f"{left} {core} {right}"


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
