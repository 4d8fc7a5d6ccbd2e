"""LlaSMol's scoring of every SMolInstruct task, on hand-made answers with values worked out by hand.

Each case names the LlaSMol rule it pins. `S`, `F`, `I`, `N`, `B` wrap an answer
core in the task's output core tags as a model is trained to write them.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("rdkit")

from fedhpc.chem.metrics import (  # noqa: E402
    LLASMOL_TASKS,
    aggregate,
    answer_tags,
    prepare,
    primary_metric,
    score_task,
    task_family,
)
from fedhpc.errors import DataError  # noqa: E402


def S(core: str) -> str:
    return f"The answer is <SMILES> {core} </SMILES> ."


def F(core: str) -> str:
    return f"<MOLFORMULA> {core} </MOLFORMULA>"


def I(core: str) -> str:  # noqa: E743 - the IUPAC tag's initial, like the others
    return f"<IUPAC> {core} </IUPAC>"


def N(core: str) -> str:
    return f"Its value is <NUMBER> {core} </NUMBER> ."


def B(core: str) -> str:
    return f"<BOOLEAN> {core} </BOOLEAN>"


def test_all_fourteen_llasmol_tasks_have_a_family_tags_and_a_primary_metric() -> None:
    assert len(LLASMOL_TASKS) == 14
    families = {task: task_family(task) for task in LLASMOL_TASKS}
    assert families["forward_synthesis"] == families["retrosynthesis"] == "smiles"
    assert families["molecule_generation"] == families["name_conversion-i2s"] == "smiles"
    assert families["name_conversion-i2f"] == families["name_conversion-s2f"] == "formula"
    assert families["name_conversion-s2i"] == "iupac"
    assert families["property_prediction-esol"] == families["property_prediction-lipo"] == "number"
    for task in ("bbbp", "clintox", "hiv", "sider"):
        assert families[f"property_prediction-{task}"] == "boolean"
    assert families["molecule_captioning"] == "text"
    assert answer_tags("molecule_captioning") == (None, None)
    assert answer_tags("name_conversion-s2i") == ("<IUPAC>", "</IUPAC>")
    assert primary_metric("retrosynthesis") == ("exact_match", True)
    assert primary_metric("property_prediction-esol") == ("rmse", False)
    assert primary_metric("molecule_captioning") == ("meteor", True)


def test_our_rdkit_tasks_and_unknown_tasks_map_to_families() -> None:
    assert task_family("property_prediction-logp") == task_family("property_prediction-tpsa") == "number"
    assert task_family("property_prediction-lipinski") == "boolean"
    assert answer_tags("property_prediction-tpsa") == ("<NUMBER>", "</NUMBER>")
    record = {"output_core_tag_left": "<SMILES>", "output_core_tag_right": "</SMILES>"}
    assert task_family("my_reaction_task", record) == "smiles"
    assert answer_tags("my_reaction_task", record) == ("<SMILES>", "</SMILES>")
    with pytest.raises(DataError, match="my_caption_task"):
        task_family("my_caption_task", {"output_core_tag_left": None})
    with pytest.raises(DataError, match="known tasks"):
        primary_metric("nonsense")


def test_selfies_answers_are_refused_before_anything_is_generated() -> None:
    selfies = {"output_core_tag_left": "<SELFIES>", "output_core_tag_right": "</SELFIES>"}
    with pytest.raises(DataError, match=r"'retrosynthesis': its answers are SELFIES .* without --selfies"):
        task_family("retrosynthesis", selfies)
    with pytest.raises(DataError, match="SELFIES"):
        prepare("retrosynthesis", [["<SELFIES> [C][O] </SELFIES>"]], [["[C][O]"]], record=selfies)


def test_forward_synthesis_exact_match_top_k_validity_and_fingerprints() -> None:
    preds = [
        [S("OCC"), S("CC")],  # q0: right at rank 1 (same molecule, other SMILES)
        [S("CCN"), S("CC(=O)O;CCO")],  # q1: right at rank 2 (";" read as ".")
        [S("C1CC")],  # q2: invalid (unclosed ring)
        ["The product is CCO."],  # q3: no tags -> no answer
        [S("CCO")],  # q4: a second gold answer matches
        [],  # q5: not answered at all (LlaSMol: input too long)
    ]
    golds = [["CCO"], ["CCO.CC(=O)O"], ["CCO"], ["CCO"], ["CCC", "OCC"], ["CCO"]]
    result = score_task("forward_synthesis", preds, golds)
    assert result["n"] == 6
    assert result["exact_match"] == pytest.approx(2 / 6)
    assert result["exact_match_top2"] == pytest.approx(3 / 6)
    assert result["invalid"] == pytest.approx(1 / 6)
    assert result["no_answer"] == pytest.approx(2 / 6)
    assert result["valid"] == pytest.approx(3 / 6)
    # fingerprints average the valid first answers only: q0 and q4 are exact (1.0), q1's CCN vs its gold is not
    assert 2 / 3 < result["morgan_fts"] < 1.0
    assert "subset_match" not in result  # multiple match is retrosynthesis's only


def test_fingerprints_over_exact_answers_are_one_and_nan_without_valid_answers() -> None:
    assert score_task("molecule_generation", [[S("c1ccccc1")]], [["C1=CC=CC=C1"]])["maccs_fts"] == 1.0
    nothing_valid = score_task("molecule_generation", [[S("C1CC")], ["no idea"]], [["CCO"], ["CCO"]])
    assert math.isnan(nothing_valid["maccs_fts"]) and math.isnan(nothing_valid["rdk_fts"])
    assert nothing_valid["valid"] == 0.0 and nothing_valid["exact_match"] == 0.0


@pytest.mark.parametrize(
    ("answer", "matched"),
    [
        ("<smiles> CCO </smiles>", False),  # lowercase tags: no answer
        ("<SMILES> CCO", False),  # right tag missing: no answer
        ("<SMILES> CCO </SMILES>", True),
        ("<SMILES> [13CH3]CO </SMILES>", True),  # LlaSMol's canonicalisation drops isotopes
        ("<SMILES> CCO. </SMILES>", False),  # an empty part makes the answer invalid
    ],
)
def test_i2s_malformed_answers(answer: str, matched: bool) -> None:
    assert score_task("name_conversion-i2s", [[answer]], [["OCC"]])["exact_match"] == float(matched)


def test_lenient_mode_forgives_tag_case_and_a_missing_right_tag() -> None:
    answers = [["<smiles> CCO </smiles>"], ["<SMILES> CCO<|im_end|>"]]
    assert score_task("name_conversion-i2s", answers, [["CCO"], ["CCO"]])["exact_match"] == 0.0
    lenient = score_task("name_conversion-i2s", answers, [["CCO"], ["CCO"]], lenient=True)
    assert lenient["exact_match"] == 1.0 and lenient["no_answer"] == 0.0


def test_retrosynthesis_subset_and_intersection_match() -> None:
    gold = ["CCO.CC(=O)Cl"]
    preds = [
        [S("CC(=O)Cl.OCC")],  # exact
        [S("CCO")],  # a subset of the gold reactants
        [S("CCO.CCN")],  # shares CCO but adds CCN: intersection only
        [S("CCN"), S("CCO")],  # nothing at rank 1, a subset at rank 2
    ]
    result = score_task("retrosynthesis", preds, [gold] * 4)
    assert result["exact_match"] == pytest.approx(1 / 4)
    assert result["subset_match"] == pytest.approx(2 / 4)
    assert result["intersection_match"] == pytest.approx(3 / 4)
    assert result["subset_match_top2"] == pytest.approx(3 / 4)
    assert result["intersection_match_top2"] == pytest.approx(4 / 4)
    assert result["exact_match_top2"] == pytest.approx(1 / 4)


def test_an_unreadable_gold_smiles_is_an_error_naming_the_question() -> None:
    with pytest.raises(DataError, match=r"question 1: gold answer 'C1CC'"):
        prepare("forward_synthesis", [[S("CCO")], [S("CCO")]], [["CCO"], ["C1CC"]])


def test_formula_element_match_as_llasmol_reads_formulas() -> None:
    preds = [
        [F("C6H6O")],  # exact
        [F("H6C6O")],  # element order does not matter
        [F("C6 H6 O")],  # spaces: invalid
        [F("C6H6")],  # wrong count
        [F("C4H12N")],  # charge missing: wrong
        [F("C2H6"), F("C2H6O")],  # right at rank 2
        ["C6H6O"],  # untagged: no answer
    ]
    golds = [["C6H6O"]] * 4 + [["C4H12N+"]] + [["C2H6O"]] + [["C6H6O"]]
    result = score_task("name_conversion-s2f", preds, golds)
    assert result["element_match"] == pytest.approx(2 / 7)
    assert result["element_match_top2"] == pytest.approx(3 / 7)
    assert result["invalid"] == pytest.approx(1 / 7)
    assert result["no_answer"] == pytest.approx(1 / 7)
    lenient = score_task("name_conversion-s2f", preds, golds, lenient=True)
    assert lenient["element_match"] == pytest.approx(3 / 7)  # "C6 H6 O" reads under the tolerant rule
    assert lenient["invalid"] == 0.0


def test_i2f_several_gold_answers_and_a_bad_gold() -> None:
    result = score_task("name_conversion-i2f", [[F("C2H6O")], [F("CH4")]], [["C2H4O2", "C2H6O"], ["CH4 "]])
    assert result["element_match"] == 1.0
    with pytest.raises(DataError, match="not a molecular formula"):
        prepare("name_conversion-i2f", [[F("CH4")]], [["C H4"]])


def test_s2i_split_match() -> None:
    preds = [
        [I("sodium;acetate")],  # parts in any order
        [I("Ethanol")],  # case counts
        [I("ethanol ")],  # surrounding spaces are stripped with the tags
        [I("methanol"), I("ethanol")],  # right at rank 2
        ["<IUPAC> ethanol"],  # right tag missing: no answer
    ]
    golds = [["acetate;sodium"], ["ethanol"], ["ethanol"], ["ethanol"], ["ethanol"]]
    result = score_task("name_conversion-s2i", preds, golds)
    assert result["split_match"] == pytest.approx(2 / 5)
    assert result["split_match_top2"] == pytest.approx(3 / 5)
    assert result["no_answer"] == pytest.approx(1 / 5)


def test_number_rmse_over_valid_answers_with_no_answer_and_invalid_shares() -> None:
    preds = [
        [N("1.5")],  # error +0.5
        [N("-2")],  # error 0
        [N("\u22122.00")],  # Unicode minus: not a Python float -> invalid
        [N("abc")],  # invalid
        [N("nan")],  # not finite -> invalid
        ["about 4"],  # no answer
        [N("3e0")],  # error -1 (gold 4)
    ]
    golds = [["1.0"], ["-2.00"], ["-2.0"], ["3"], ["1"], ["4"], ["4"]]
    result = score_task("property_prediction-esol", preds, golds)
    assert result["n"] == 7
    assert result["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert result["mae"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert result["invalid"] == pytest.approx(3 / 7)
    assert result["no_answer"] == pytest.approx(1 / 7)
    lenient = score_task("property_prediction-esol", preds, golds, lenient=True)
    assert lenient["invalid"] == pytest.approx(2 / 7)  # the Unicode minus now reads (error 0)
    assert lenient["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 0 + 1) / 4))


def test_number_with_nothing_valid_is_nan_and_gold_errors() -> None:
    result = score_task("property_prediction-lipo", [["no idea"], [N(" ")]], [["1.0"], ["2.0"]])
    assert math.isnan(result["rmse"]) and result["no_answer"] == 1.0  # an empty core is no answer too
    with pytest.raises(DataError, match="exactly one gold answer"):
        prepare("property_prediction-lipo", [[N("1")]], [["1.0", "2.0"]])
    with pytest.raises(DataError, match="not a finite number"):
        prepare("property_prediction-lipo", [[N("1")]], [["high"]])


def test_boolean_accuracy_and_llasmol_extras_by_hand() -> None:
    answers = ["Yes", "Yes", "No", "No", "Yes", "No", "Yes.", None]
    golds = ["Yes", "Yes", "Yes", "No", "No", "No", "Yes", "No"]
    preds = [[B(a)] if a is not None else ["I think so"] for a in answers]
    result = score_task("property_prediction-bbbp", preds, [[g] for g in golds])
    # valid answers q0-q5: TP = 2 (q0, q1), FN = 1 (q2), TN = 2 (q3, q5), FP = 1 (q4)
    assert result["accuracy"] == pytest.approx(4 / 8)  # "Yes." and no answer count as wrong
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert result["roc_auc"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert result["invalid"] == pytest.approx(1 / 8)
    assert result["no_answer"] == pytest.approx(1 / 8)
    lenient = score_task("property_prediction-bbbp", preds, [[g] for g in golds], lenient=True)
    assert lenient["accuracy"] == pytest.approx(5 / 8)  # "Yes." reads as Yes


def test_boolean_case_and_undefined_values() -> None:
    result = score_task("property_prediction-sider", [[B("YES")], [B("yes")]], [["Yes"], ["No"]])
    assert result["accuracy"] == 0.5
    assert result["precision"] == 0.5 and result["recall"] == 1.0
    assert math.isnan(result["mcc"])  # no "No" answer: a margin of the confusion matrix is empty
    assert result["roc_auc"] == 0.5  # TPR 1, TNR 0
    one_class = score_task("property_prediction-hiv", [[B("No")], [B("No")]], [["No"], ["No"]])
    assert one_class["accuracy"] == 1.0
    assert math.isnan(one_class["roc_auc"]) and math.isnan(one_class["precision"]) and math.isnan(one_class["f1"])
    with pytest.raises(DataError, match="not Yes or No"):
        prepare("property_prediction-clintox", [[B("Yes")]], [["maybe"]])


def test_several_answers_for_a_one_answer_task_score_the_first() -> None:
    result = score_task("property_prediction-bbbp", [[B("No"), B("Yes")]], [["Yes"]])
    assert result["accuracy"] == 0.0


def test_our_rdkit_tasks_score_with_the_same_families() -> None:
    assert score_task("property_prediction-tpsa", [[N("20.5")]], [["20.23"]])["rmse"] == pytest.approx(0.27)
    assert score_task("property_prediction-lipinski", [[B("Yes")]], [["Yes"]])["accuracy"] == 1.0
    assert score_task("name_conversion-s2f", [[F("C4H12N+")]], [["C4H12N+"]])["element_match"] == 1.0


def test_aggregate_over_resampled_indices() -> None:
    prepared = prepare("property_prediction-esol", [[N("1")], [N("3")], ["none"]], [["0"], ["3"], ["1"]])
    assert aggregate(prepared)["rmse"] == pytest.approx(math.sqrt(1 / 2))
    repeated = aggregate(prepared, [0, 0, 0, 1, 2])
    assert repeated["n"] == 5
    assert repeated["rmse"] == pytest.approx(math.sqrt(3 / 4))
    assert repeated["no_answer"] == pytest.approx(1 / 5)
    empty = aggregate(prepared, [])
    assert empty["n"] == 0 and math.isnan(empty["rmse"]) and math.isnan(empty["no_answer"])


def test_aggregate_keys_do_not_depend_on_the_resample() -> None:
    prepared = prepare("retrosynthesis", [[S("CCO"), S("CCN")], [S("CCO")]], [["CCO"], ["CCN"]])
    assert prepared.top_k == 2
    assert set(aggregate(prepared)) == set(aggregate(prepared, [1, 1]))
    assert aggregate(prepared, [1, 1])["exact_match_top2"] == 0.0


def test_mismatched_and_missing_golds() -> None:
    with pytest.raises(ValueError, match="2 questions answered but 1"):
        prepare("property_prediction-esol", [[N("1")], [N("2")]], [["1"]])
    with pytest.raises(DataError, match="question 0 has no gold answer"):
        prepare("property_prediction-esol", [[N("1")]], [[]])
