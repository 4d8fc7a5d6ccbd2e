"""Trivial baselines: which one each kind of task gets, what it answers, and that the same scorer scores it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedhpc.chem.baselines import TrainingAnswers, choose_baseline
from fedhpc.chem.metrics import aggregate, primary_metric

LIPINSKI = "property_prediction-lipinski"
LOGP = "property_prediction-logp"
S2F = "name_conversion-s2f"


def question(task: str, raw_input: str, raw_output: str, tags: tuple[str | None, str | None]) -> dict[str, Any]:
    return {"task": task, "idx": 0, "raw_input": raw_input, "raw_output": raw_output, "target": None,
            "input": f"Question about <SMILES> {raw_input} </SMILES>", "output": raw_output,
            "output_core_tag_left": tags[0], "output_core_tag_right": tags[1]}  # fmt: skip


def primary(task: str, baseline: Any) -> float:
    return aggregate(baseline.prepared)[primary_metric(task)[0]]


@pytest.mark.parametrize(("yes", "no", "answer"), [(7, 3, "Yes"), (3, 7, "No")])
def test_yes_no_tasks_get_the_majority_class_of_the_evaluated_questions(yes: int, no: int, answer: str) -> None:
    golds = [["Yes"]] * yes + [["No"]] * no
    questions = [question(LIPINSKI, "CCO", g[0], ("<BOOLEAN>", "</BOOLEAN>")) for g in golds]
    baseline = choose_baseline(LIPINSKI, questions, golds, TrainingAnswers(["Yes"] * 50))  # train is not asked
    assert baseline.name == f"majority class ({answer})"
    assert baseline.answers == [[f"<BOOLEAN> {answer} </BOOLEAN>"]] * 10  # tagged: the strict extraction applies
    assert aggregate(baseline.prepared)["accuracy"] == pytest.approx(0.7)


def test_the_majority_is_counted_in_any_case_as_the_scorer_reads_gold_answers() -> None:
    golds = [["yes"]] * 7 + [["no"]] * 3
    questions = [question(LIPINSKI, "CCO", g[0], ("<BOOLEAN>", "</BOOLEAN>")) for g in golds]
    baseline = choose_baseline(LIPINSKI, questions, golds, None)
    assert baseline.name == "majority class (Yes)" and aggregate(baseline.prepared)["accuracy"] == pytest.approx(0.7)


def test_numbers_get_the_training_mean_scored_on_the_evaluated_answers() -> None:
    golds = [["1.0"], ["5.0"]]
    questions = [question(LOGP, "CCO", g[0], ("<NUMBER>", "</NUMBER>")) for g in golds]
    train = TrainingAnswers(["1.0", "2.0", "6.0", "n/a"])  # a non-number in the training answers is skipped
    baseline = choose_baseline(LOGP, questions, golds, train)
    assert baseline.name == "training mean (3)"
    assert baseline.answers[0] == ["<NUMBER> 3 </NUMBER>"]
    metric, higher = primary_metric(LOGP)
    assert (metric, higher) == ("rmse", False)
    assert primary(LOGP, baseline) == pytest.approx(2.0)  # sqrt(((1-3)^2 + (5-3)^2) / 2)


def test_without_a_training_split_the_mean_of_the_evaluated_answers_is_named_so() -> None:
    golds = [["1.0"], ["2.0"], ["6.0"]]
    questions = [question(LOGP, "C", g[0], ("<NUMBER>", "</NUMBER>")) for g in golds]
    baseline = choose_baseline(LOGP, questions, golds, None)
    assert baseline.name == "mean of the evaluated answers (3)"
    assert primary(LOGP, baseline) == pytest.approx(math.sqrt((4 + 1 + 9) / 3))


def test_generation_tasks_take_the_most_frequent_training_answer_when_it_beats_echoing_the_input() -> None:
    golds = [["C2H6O"], ["C2H6O"], ["CH4"], ["H2O"]]
    questions = [question(S2F, smiles, g[0], ("<MOLFORMULA>", "</MOLFORMULA>"))
                 for smiles, g in zip(["CCO", "OCC", "C", "O"], golds)]  # fmt: skip
    train = TrainingAnswers(["C2H6O", "CH4", "C2H6O", "C2H6O", "H2O"])
    baseline = choose_baseline(S2F, questions, golds, train)
    assert baseline.name == "most frequent training answer"
    assert baseline.answers == [["<MOLFORMULA> C2H6O </MOLFORMULA>"]] * 4
    assert primary(S2F, baseline) == pytest.approx(0.5)


def test_echoing_the_input_wins_where_the_input_already_is_the_answer() -> None:
    """Forward synthesis whose "product" is the reactant itself, written another way: the echo matches by
    canonical identity (the scorer's InChI), and beats the most frequent training product."""
    golds = [["OCC"], ["c1ccccc1"], ["CC(=O)O"]]
    inputs = ["CCO", "C1=CC=CC=C1", "OC(C)=O"]
    questions = [question("forward_synthesis", i, g[0], ("<SMILES>", "</SMILES>")) for i, g in zip(inputs, golds)]
    baseline = choose_baseline("forward_synthesis", questions, golds, TrainingAnswers(["CCN", "CCN", "CCO"]))
    assert baseline.name == "echo input"
    assert baseline.answers[1] == ["<SMILES> C1=CC=CC=C1 </SMILES>"]
    assert primary("forward_synthesis", baseline) == pytest.approx(1.0)


def test_without_a_training_split_the_most_frequent_evaluated_answer_is_named_so() -> None:
    golds = [["CH4"], ["CH4"], ["H2O"]]
    questions = [question(S2F, s, g[0], ("<MOLFORMULA>", "</MOLFORMULA>")) for s, g in zip(["C", "C", "O"], golds)]
    baseline = choose_baseline(S2F, questions, golds, None)
    assert baseline.name == "most frequent evaluated answer"
    assert primary(S2F, baseline) == pytest.approx(2 / 3)


def test_most_frequent_training_answer_breaks_ties_reproducibly() -> None:
    assert TrainingAnswers(["b", "a", "b", "a", " "]).most_frequent() == "a"
    assert TrainingAnswers([]).most_frequent() is None
    assert TrainingAnswers(["x", "inf"]).mean() is None
