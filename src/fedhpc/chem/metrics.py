"""Score generated answers against SMolInstruct-style records.

The answer is whatever the model wrote between the record's output core tags
(`<NUMBER> 1.32 </NUMBER>`), as in LlaSMol's evaluation (`extract_answer_part`),
with two tolerances a small model needs: the tags are matched case-insensitively,
and a missing right tag is forgiven (the answer then runs to the next `<` or line
end, which also drops end-of-turn tokens such as `<|im_end|>`, less the " ." that
ends SMolInstruct's sentences). No left tag, or nothing between the tags, is
*unparseable*. LlaSMol itself scores a missing right tag as no answer.

Per kind of task (`task_kind`):

- formula: exact match of element counts (`canonical_formula`), unparseable = wrong;
- regression: RMSE and MAE over the parseable answers only, plus the share unparseable;
  RMSE/MAE are NaN when no answer parses (there is nothing to average);
- classification: accuracy over all answers (Yes/No, case-insensitive; unparseable = wrong).

Every result also carries `n` (number of answers) and `unparseable` (a share in [0, 1]).
Nothing here needs RDKit.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from fedhpc.chem.tasks import KIND_BY_OUTPUT_TAG, RELEASE_TASK_KINDS, TASKS, TaskKind
from fedhpc.errors import DataError

logger = logging.getLogger(__name__)

ELEMENTS = frozenset(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr
    Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb
    Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf
    Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og D T""".split()
)

Formula = tuple[tuple[str, int], ...]


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


def extract_core(text: str, left: str | None, right: str | None) -> str | None:
    """The text between the first `left` tag and the `right` tag after it, stripped; None if absent or empty.

    `left=None` (a task without core tags) takes the whole text.
    """
    if left is None:
        core = text
    else:
        lowered = text.lower()
        start = lowered.find(left.lower())
        if start < 0:
            return None
        start += len(left)
        end = lowered.find(right.lower(), start) if right else -1
        if end >= 0:
            core = text[start:end]
        else:  # no right tag: up to the next tag, special token or line break, less a closing " ."
            core = re.split(r"[<\n]", text[start:], maxsplit=1)[0].strip().removesuffix(".")
    core = core.strip()
    return core or None


_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)|\((?=.)|\)(\d*)")


def canonical_formula(text: str) -> Formula | None:
    """Element counts of a molecular formula as a sorted tuple, or None if it does not parse.

    What is made equal: whitespace anywhere (`C6 H6 O` == `C6H6O`), element order
    (`H6C6O` == `C6H6O`, Hill order is not required), explicit ones (`O1` == `O`),
    repeated elements (`CH3CH2OH` == `C2H6O`), parenthesised groups with a
    multiplier (`C(CH3)4` == `C5H12`) and zero counts (dropped). A net charge
    written at the end as RDKit and SMolInstruct do (`+`, `-`, `+2`) is kept as
    a `("charge", n)` entry, so `C4H12N+` != `C4H12N`. What is not made equal:
    letter case (`CO` is carbon monoxide, `Co` cobalt), and isotopes written as
    `D`/`T`, which stay distinct from `H`. Unknown element symbols do not parse.
    """
    body = re.sub(r"\s+", "", text)
    charge = 0
    match = re.search(r"([+-])(\d*)$", body)
    if match:
        charge = int(match.group(2) or 1) * (1 if match.group(1) == "+" else -1)
        body = body[: match.start()]
    if not body:
        return None
    stack: list[Counter[str]] = [Counter()]
    pos = 0
    while pos < len(body):
        token = _FORMULA_TOKEN.match(body, pos)
        if token is None:
            return None
        pos = token.end()
        element, count, close_count = token.group(1), token.group(2), token.group(3)
        if element is not None:
            if element not in ELEMENTS:
                return None
            stack[-1][element] += int(count or 1)
        elif token.group(0) == "(":
            stack.append(Counter())
        else:
            if len(stack) == 1:
                return None
            group = stack.pop()
            for name, n in group.items():
                stack[-1][name] += n * int(close_count or 1)
    if len(stack) != 1:
        return None
    counts = {name: n for name, n in stack[0].items() if n}
    if charge:
        counts["charge"] = charge
    return tuple(sorted(counts.items())) or None


def parse_number(text: str | None) -> float | None:
    """A finite float from the core, or None; a Unicode minus sign is read as '-'."""
    if text is None:
        return None
    try:
        value = float(text.replace("\u2212", "-"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_boolean(text: str | None) -> bool | None:
    """Yes -> True, No -> False (case-insensitive, trailing full stop allowed), else None."""
    if text is None:
        return None
    return {"yes": True, "no": False}.get(text.strip().rstrip(".").strip().lower())


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
