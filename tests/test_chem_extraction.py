"""Cutting answers out of generated text: LlaSMol's strict rule (extract_answer_part) and the tolerant one."""

from __future__ import annotations

import pytest

from fedhpc.chem.extraction import extract_answer, extract_core
from fedhpc.errors import DataError

SMILES = ("<SMILES>", "</SMILES>")
NUMBER = ("<NUMBER>", "</NUMBER>")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The product is <SMILES> CCO </SMILES> .", "CCO"),
        ("<SMILES>CCO</SMILES>", "CCO"),
        ("<SMILES> CCO </SMILES> and <SMILES> CCN </SMILES>", "CCO"),  # the first answer counts
        ("<SMILES> CCO <SMILES> CCN </SMILES>", "CCO <SMILES> CCN"),  # first left tag to first right tag
        ("<SMILES> CCO </SMILES> </SMILES>", "CCO"),
        ("<SMILES> CCO", None),  # right tag missing
        ("<SMILES> CCO<|im_end|>", None),
        ("CCO </SMILES>", None),  # left tag missing
        ("<smiles> CCO </smiles>", None),  # tags are case-sensitive
        ("<Smiles> CCO </SMILES>", None),
        ("<SMILES>   </SMILES>", None),  # empty core
        ("</SMILES> oops <SMILES> CCO </SMILES>", None),  # right tag first: LlaSMol's slice is empty
        ("", None),
    ],
)
def test_strict_extraction_follows_llasmol(text: str, expected: str | None) -> None:
    assert extract_answer(text, *SMILES) == expected


def test_untagged_tasks_take_the_whole_text_less_unk_and_eos() -> None:
    assert extract_answer("  The molecule is an acid.</s>", None, None) == "The molecule is an acid."
    assert extract_answer("An <unk>acid.", None, None) == "An acid."
    assert extract_answer(" </s> ", None, None) is None


def test_half_a_tag_pair_is_an_error() -> None:
    with pytest.raises(DataError, match="both be set or both be null"):
        extract_answer("x", "<SMILES>", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The logP is <NUMBER> 1.32 </NUMBER> .", "1.32"),
        ("<number> 1.32 </Number>", "1.32"),  # any case
        ("<NUMBER> 1.32<|im_end|>", "1.32"),  # right tag missing: up to the next tag
        ("<NUMBER> 1.32\nmore text", "1.32"),
        ("The logP is <NUMBER> 1.32 .", "1.32"),  # less the sentence's closing " ."
        ("1.32", None),
        ("<NUMBER>  </NUMBER>", None),
        ("</NUMBER> <NUMBER> 2 </NUMBER>", "2"),  # the right tag is searched after the left one
    ],
)
def test_lenient_extraction_is_the_tolerant_rule(text: str, expected: str | None) -> None:
    assert extract_answer(text, *NUMBER, lenient=True) == expected
    assert extract_core(text, *NUMBER) == expected


def test_lenient_untagged_keeps_the_text() -> None:
    assert extract_answer("  bare  ", None, None, lenient=True) == "bare"
