"""Reading records: our layout, the SMolInstruct release's data.zip layout, plain JSONL; clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedhpc.chem.release import read_release
from fedhpc.chem.smolinstruct import iter_records, load_records, write_split
from fedhpc.chem.tasks import RECORD_FIELDS
from fedhpc.errors import DataError
from smolinstruct_release import write_release


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """The miniature of osunlp/SMolInstruct's data.zip (see smolinstruct_release.py), as its parent folder."""
    return write_release(tmp_path)


def test_reads_the_release_as_its_loading_script_does(release: Path) -> None:
    records = load_records(release, "train")  # the parent holding data/ works too
    assert [r["task"] for r in records] == sorted(r["task"] for r in records)
    assert records == list(read_release(release / "data", "train"))
    s2f = [r for r in records if r["task"] == "name_conversion-s2f"]
    assert [(r["idx"], r["output"]) for r in s2f] == [
        (2, "<MOLFORMULA> C2H4O2 </MOLFORMULA>"),
        (0, "The formula is <MOLFORMULA> C2H6O </MOLFORMULA> ."),
        (3, "<MOLFORMULA> C2H7N </MOLFORMULA>"),
    ]
    sider = load_records(release / "data", "train", ["property_prediction-sider"])
    assert [(r["idx"], r["target"], r["raw_output"]) for r in sider] == [
        (0, "Cardiac disorders", "Yes"),
        (0, "Hepatobiliary disorders", "No"),
        (1, "Cardiac disorders", "No"),
    ]


def test_a_release_without_its_sample_files_is_an_error_not_raw_pairs(release: Path) -> None:
    shutil.rmtree(release / "data" / "sample" / "instruction_tuning" / "test")
    with pytest.raises(DataError, match=r"sample/instruction_tuning/test: no sample files; .*extract the whole"):
        load_records(release, "test")
    with pytest.raises(DataError, match=r"no sample file for \['molecule_generation'\]"):
        load_records(release, "train", ["molecule_generation"])


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
    assert load_records(tmp_path, "validation") == [{**record, "idx": 0}, {**record, "sample_id": "x", "idx": 1}]
    assert list(load_records(tmp_path, "dev")[0]) == [*RECORD_FIELDS, "idx"]
    with pytest.raises(DataError, match="no records of split 'train'"):
        load_records(tmp_path, "train")
    with pytest.raises(DataError, match="tasks"):
        load_records(tmp_path, "dev", ["name_conversion-s2f"])
    (tmp_path / "dev" / "property_prediction-tpsa.jsonl").write_text("{half a line\n")
    assert len(load_records(tmp_path, "dev", ["property_prediction-logp"])) == 2, "other tasks' files are not read"
    with pytest.raises(DataError, match=r"property_prediction-tpsa\.jsonl:1"):
        load_records(tmp_path, "dev")


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


def test_plain_records_are_numbered_within_their_task_and_split(tmp_path: Path) -> None:
    lines = [
        {"input": "a", "output": "<NUMBER> 1 </NUMBER>", "task": "property_prediction-esol"},
        {"input": "b", "output": "<BOOLEAN> Yes </BOOLEAN>", "task": "property_prediction-bbbp"},
        {"input": "c", "output": "<NUMBER> 2 </NUMBER>", "task": "property_prediction-esol", "split": "test"},
        {"input": "d", "output": "<NUMBER> 3 </NUMBER>", "task": "property_prediction-esol"},
    ]
    write_jsonl(tmp_path / "mixed.jsonl", lines)
    assert [(r["input"], r["idx"]) for r in load_records(tmp_path / "mixed.jsonl")] == [
        ("a", 0), ("b", 0), ("d", 1)
    ]  # fmt: skip


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


def test_iter_records_streams_so_a_large_train_split_is_never_held(tmp_path: Path) -> None:
    good = {"input": "Q <SMILES> C </SMILES>", "output": "<NUMBER> 1.0 </NUMBER>", "task": "property_prediction-esol"}
    path = tmp_path / "train" / "property_prediction-esol.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(good) + "\n" + "{half a line\n", encoding="utf-8")
    records = iter_records(tmp_path, "train")
    assert next(records)["input"] == good["input"]  # the first record comes before the bad second line is read
    with pytest.raises(DataError, match=r"property_prediction-esol\.jsonl:2"):
        next(records)
    assert list(iter_records(tmp_path, "train", ["property_prediction-lipo"])) == []  # load_records: an error
