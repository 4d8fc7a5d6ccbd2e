"""Reading records: our layout, the SMolInstruct release's data.zip layout, plain JSONL; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhpc.chem.metrics import score_all
from fedhpc.chem.smolinstruct import load_records, write_split
from fedhpc.chem.tasks import RECORD_FIELDS
from fedhpc.errors import DataError


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A miniature of osunlp/SMolInstruct's data.zip, laid out as its loading script reads it."""
    root = tmp_path / "SMolInstruct" / "data"
    s2f, sider = "name_conversion-s2f", "property_prediction-sider"
    write_jsonl(
        root / "raw" / "train" / f"{s2f}.jsonl",
        [
            {"input": "C1=CC=CC=C1", "output": "C6H6", "task": s2f, "split": "train"},
            {"input": "CCO", "output": "C2H6O", "task": s2f, "split": "train"},
        ],
    )
    write_jsonl(root / "raw" / "test" / f"{s2f}.jsonl", [{"input": "C", "output": "CH4", "task": s2f, "split": "test"}])
    write_jsonl(
        root / "raw" / "train" / f"{sider}.jsonl",
        [
            {
                "input": "CCN",
                "output": {"Hepatobiliary disorders": "No", "Cardiac disorders": "Yes"},
                "task": sider,
                "split": "train",
            }
        ],
    )
    smiles_tags = ["<SMILES>", "</SMILES>"]
    write_json(root / "core_tag" / f"{s2f}.json", {"input": smiles_tags, "output": ["<MOLFORMULA>", "</MOLFORMULA>"]})
    write_json(root / "core_tag" / f"{sider}.json", {"input": smiles_tags, "output": ["<BOOLEAN>", "</BOOLEAN>"]})
    write_json(
        root / "template" / "instruction_tuning" / f"{s2f}.json",
        [
            {"input": "What is the molecular formula of <INPUT> ?", "output": "It is <OUTPUT> ."},
            {"input": "<INPUT> Give its formula.", "output": "<OUTPUT>"},
        ],
    )
    write_json(
        root / "template" / "instruction_tuning" / f"{sider}.json",
        [{"input": "Does <INPUT> cause cardiac disorders?", "output": "<OUTPUT>"}],
    )
    write_json(
        root / "sample" / "instruction_tuning" / "train" / f"{s2f}.json",
        {
            "task": s2f,
            "split": "train",
            "template_name": "instruction_tuning",
            "samples": [{"idx": 1, "template_id": 0}, {"idx": 0, "template_id": 1}],
        },
    )
    write_json(
        root / "sample" / "instruction_tuning" / "train" / f"{sider}.json",
        {
            "task": sider,
            "split": "train",
            "template_name": "instruction_tuning",
            "samples": [{"idx": 0, "template_id": 0, "target": "Cardiac disorders"}],
        },
    )
    return tmp_path / "SMolInstruct"


def test_reads_the_release_layout_as_its_loading_script_does(release: Path) -> None:
    records = load_records(release, "train")  # the parent holding data/ works too
    assert [r["task"] for r in records] == ["name_conversion-s2f", "name_conversion-s2f", "property_prediction-sider"]
    first = records[0]
    assert first == {
        "input": "What is the molecular formula of <SMILES> CCO </SMILES> ?",
        "output": "It is <MOLFORMULA> C2H6O </MOLFORMULA> .",
        "raw_input": "CCO",
        "raw_output": "C2H6O",
        "task": "name_conversion-s2f",
        "split": "train",
        "input_core_tag_left": "<SMILES>",
        "input_core_tag_right": "</SMILES>",
        "output_core_tag_left": "<MOLFORMULA>",
        "output_core_tag_right": "</MOLFORMULA>",
        "target": None,
        "sample_id": None,
    }
    assert records[1]["input"] == "<SMILES> C1=CC=CC=C1 </SMILES> Give its formula."
    assert records[2]["raw_output"] == "Yes" and records[2]["target"] == "Cardiac disorders"
    assert load_records(release / "data", "train", ["property_prediction-sider"]) == [records[2]]
    scores = score_all([r["output"] for r in records], records)
    assert scores["name_conversion-s2f"]["exact_match"] == 1.0
    assert scores["property_prediction-sider"]["accuracy"] == 1.0


def test_release_without_samples_gives_bare_tagged_records(release: Path) -> None:
    records = load_records(release, "test")  # raw/test exists but sample/instruction_tuning/test does not
    assert [(r["input"], r["output"]) for r in records] == [("<SMILES> C </SMILES>", "<MOLFORMULA> CH4 </MOLFORMULA>")]


def test_reads_our_layout_with_split_aliases(tmp_path: Path) -> None:
    record = {
        "input": "What is the Crippen logP of the molecule <SMILES> CCO </SMILES> ?",
        "output": "Its Crippen logP is <NUMBER> -0.00 </NUMBER> .",
        "raw_input": "CCO",
        "raw_output": "-0.00",
        "task": "property_prediction-logp",
        "split": "dev",
        "input_core_tag_left": "<SMILES>",
        "input_core_tag_right": "</SMILES>",
        "output_core_tag_left": "<NUMBER>",
        "output_core_tag_right": "</NUMBER>",
        "target": None,
        "sample_id": "property_prediction-logp.dev.0",
    }
    assert write_split(tmp_path, "dev", [record, {**record, "sample_id": "x"}]) == {"property_prediction-logp": 2}
    assert (tmp_path / "dev" / "property_prediction-logp.jsonl").read_text().count("\n") == 2
    assert load_records(tmp_path, "validation") == [record, {**record, "sample_id": "x"}]
    assert list(load_records(tmp_path, "dev")[0]) == list(RECORD_FIELDS)
    with pytest.raises(DataError, match="no records of split 'train'"):
        load_records(tmp_path, "train")
    with pytest.raises(DataError, match="tasks"):
        load_records(tmp_path, "dev", ["name_conversion-s2f"])


def test_reads_plain_jsonl_files_and_task_split_folders(tmp_path: Path) -> None:
    plain = tmp_path / "mine.jsonl"
    write_jsonl(
        plain,
        [
            {
                "input": "Formula of <SMILES> C </SMILES>?",
                "output": "<MOLFORMULA> CH4 </MOLFORMULA>",
                "task": "name_conversion-s2f",
            },
            {"input": "q", "output": "<NUMBER> 1 </NUMBER>", "task": "property_prediction-tpsa", "split": "test"},
        ],
    )
    train = load_records(plain)  # a line without split counts as train
    assert len(train) == 1 and train[0]["raw_output"] == "CH4"  # cut from the output by the task's tags
    assert train[0]["output_core_tag_left"] == "<MOLFORMULA>"
    assert load_records(plain, "test")[0]["task"] == "property_prediction-tpsa"
    nested = tmp_path / "by_task" / "property_prediction-logp" / "test.jsonl"
    write_jsonl(nested, [{"input": "q", "output": "<NUMBER> 2 </NUMBER>"}])
    records = load_records(tmp_path / "by_task", "test")
    assert [(r["task"], r["split"], r["raw_output"]) for r in records] == [("property_prediction-logp", "test", "2")]


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as missing:
        load_records(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(missing.value) and "expected" in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected one of"):
        load_records(tmp_path / "empty")
    write_jsonl(tmp_path / "bad" / "train" / "x.jsonl", [{"question": "no input field"}])
    with pytest.raises(DataError, match=r"x\.jsonl:1: a record needs string fields 'input' and 'output'"):
        load_records(tmp_path / "bad")
    (tmp_path / "broken.jsonl").write_text('{"input": "q", "output": "a", "task": "t"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl:2"):
        load_records(tmp_path / "broken.jsonl")
    with pytest.raises(DataError, match="unknown split"):
        load_records(tmp_path, "holdout")
