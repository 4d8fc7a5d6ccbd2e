"""Scoring chemistry answers: extraction between core tags, formula canonicalisation, RMSE/MAE, accuracy."""

from __future__ import annotations

import math

import pytest

from fedhpc.chem.metrics import canonical_formula, extract_core, score, score_all, task_kind
from fedhpc.chem.tasks import TASKS
from fedhpc.errors import DataError

S2F, LOGP, TPSA, LIPINSKI = (
    "name_conversion-s2f",
    "property_prediction-logp",
    "property_prediction-tpsa",
    "property_prediction-lipinski",
)


def ref(task: str, answer: str) -> dict:
    left, right = TASKS[task].output_tags
    return {
        "task": task,
        "raw_output": answer,
        "output": f"{left} {answer} {right}",
        "output_core_tag_left": left,
        "output_core_tag_right": right,
    }


def test_extract_core() -> None:
    assert extract_core("The logP is <NUMBER> 1.32 </NUMBER> .", "<NUMBER>", "</NUMBER>") == "1.32"
    assert extract_core("<NUMBER>1.32</NUMBER>", "<NUMBER>", "</NUMBER>") == "1.32"
    assert extract_core("<number> 1.32 </Number>", "<NUMBER>", "</NUMBER>") == "1.32"
    assert extract_core("<NUMBER> 1.32<|im_end|>", "<NUMBER>", "</NUMBER>") == "1.32"  # right tag missing
    assert extract_core("<NUMBER> 1.32\nmore text", "<NUMBER>", "</NUMBER>") == "1.32"
    assert extract_core("<NUMBER> 1.32", "<NUMBER>", "</NUMBER>") == "1.32"
    assert extract_core("The logP is <NUMBER> 1.32 .", "<NUMBER>", "</NUMBER>") == "1.32"
    assert extract_core("<MOLFORMULA> C6H6O .", "<MOLFORMULA>", "</MOLFORMULA>") == "C6H6O"
    assert extract_core("1.32", "<NUMBER>", "</NUMBER>") is None  # no tag: unparseable
    assert extract_core("<NUMBER>  </NUMBER>", "<NUMBER>", "</NUMBER>") is None
    assert extract_core("<A> x </A> <A> y </A>", "<A>", "</A>") == "x"  # the first answer counts
    assert extract_core("  bare  ", None, None) == "bare"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("C6H6O", "C6 H6 O1"),
        ("C6H6O", "H6C6O"),
        ("C6H6O", " O C6 H6 "),
        ("C2H6O", "CH3CH2OH"),
        ("C5H12", "C(CH3)4"),
        ("C4H12N+", "C4H12N+1"),
        ("C2H3O2-", "C2 H3 O2 -"),
        ("CH4", "CH4O0"),
    ],
)
def test_formulas_equal_after_canonicalising(a: str, b: str) -> None:
    assert canonical_formula(a) is not None
    assert canonical_formula(a) == canonical_formula(b)


@pytest.mark.parametrize(("a", "b"), [("CO", "Co"), ("C4H12N+", "C4H12N"), ("C6H6", "C6H5D"), ("C6H6", "C6H6O")])
def test_formulas_that_differ(a: str, b: str) -> None:
    assert canonical_formula(a) != canonical_formula(b)


@pytest.mark.parametrize("bad", ["", "c6h6", "C6H6Xx", "C6)H6", "(C6H6", "C6-H6", "six carbons", "+"])
def test_formulas_that_do_not_parse(bad: str) -> None:
    assert canonical_formula(bad) is None


def test_formula_exact_match_and_unparseable_share() -> None:
    refs = [ref(S2F, "C6H6O")] * 4 + [ref(S2F, "C4H12N+")]
    preds = [
        "The molecular formula is <MOLFORMULA> C6 H6 O1 </MOLFORMULA> .",
        "<MOLFORMULA>H6C6O</MOLFORMULA>",
        "The formula is C6H6O",  # no tag
        "<MOLFORMULA> C6H5O </MOLFORMULA>",  # wrong
        "<MOLFORMULA> C4H12N </MOLFORMULA>",  # charge missing: wrong
    ]
    assert score(S2F, preds, refs) == {"n": 5.0, "unparseable": 0.2, "exact_match": 0.4}


def test_regression_rmse_mae_by_hand() -> None:
    refs = [ref(LOGP, "1.00"), ref(LOGP, "2.00"), ref(LOGP, "3.00"), ref(LOGP, "4.00"), ref(LOGP, "-1.00")]
    preds = [
        "Its logP is <NUMBER> 1.5 </NUMBER> .",  # error +0.5
        "<NUMBER> 2.0",  # error 0, right tag missing
        "<NUMBER> abc </NUMBER>",  # unparseable
        "about 4",  # no tag: unparseable
        "<NUMBER> \u22122.00 </NUMBER>",  # Unicode minus, error -1
    ]
    result = score(LOGP, preds, refs)
    assert result["n"] == 5
    assert result["unparseable"] == pytest.approx(0.4)
    assert result["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert result["mae"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_regression_with_nothing_parseable_is_nan() -> None:
    result = score(TPSA, ["no idea", "<NUMBER> nan </NUMBER>"], [ref(TPSA, "20.23"), ref(TPSA, "0.00")])
    assert result["unparseable"] == 1.0
    assert math.isnan(result["rmse"]) and math.isnan(result["mae"])


def test_classification_accuracy() -> None:
    refs = [ref(LIPINSKI, a) for a in ("Yes", "No", "Yes", "No", "Yes")]
    preds = [
        "<BOOLEAN> yes </BOOLEAN>",
        "<BOOLEAN>NO</BOOLEAN>",
        "<BOOLEAN> maybe </BOOLEAN>",  # unparseable
        "",  # unparseable
        "<BOOLEAN> No </BOOLEAN>",  # wrong
    ]
    assert score(LIPINSKI, preds, refs) == {"n": 5.0, "unparseable": 0.4, "accuracy": 0.4}


def test_score_all_groups_by_task_and_skips_unscorable_tasks() -> None:
    refs = [ref(S2F, "CH4"), ref(LIPINSKI, "No"), ref(S2F, "C2H6"), {"task": "forward_synthesis", "raw_output": "CCO"}]
    preds = ["<MOLFORMULA> CH4 </MOLFORMULA>", "<BOOLEAN> No </BOOLEAN>", "<MOLFORMULA> C2H4 </MOLFORMULA>", "CCO"]
    scores = score_all(preds, refs)
    assert list(scores) == [S2F, LIPINSKI]
    assert scores[S2F]["exact_match"] == 0.5
    assert scores[LIPINSKI]["accuracy"] == 1.0


def test_task_kind() -> None:
    assert task_kind(S2F) == "formula"
    assert task_kind(LOGP) == task_kind(TPSA) == "regression"
    assert task_kind(LIPINSKI) == "classification"
    assert task_kind("property_prediction-esol") == "regression"
    assert task_kind("property_prediction-bbbp") == "classification"
    assert task_kind("my_task", {"output_core_tag_left": "<NUMBER>"}) == "regression"
    with pytest.raises(DataError, match="forward_synthesis"):
        task_kind("forward_synthesis")


def test_reference_without_raw_output_is_cut_from_output() -> None:
    reference = {"task": LOGP, "output": "Its logP is <NUMBER> 2.50 </NUMBER> ."}
    assert score(LOGP, ["<NUMBER> 2.0 </NUMBER>"], [reference])["mae"] == pytest.approx(0.5)


def test_mismatched_lengths_and_bad_references() -> None:
    with pytest.raises(ValueError):
        score(LOGP, ["<NUMBER> 1 </NUMBER>"], [])
    with pytest.raises(DataError, match="not a valid"):
        score(LOGP, ["<NUMBER> 1 </NUMBER>"], [ref(LOGP, "high")])
