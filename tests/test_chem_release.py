"""The SMolInstruct release read as its loading script reads it, on a hand-written miniature of data.zip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhpc.chem.release import read_release, release_root, release_tasks, sample_count
from fedhpc.chem.smolinstruct import load_records
from fedhpc.chem.tasks import RECORD_FIELDS
from fedhpc.errors import DataError
from smolinstruct_release import TASKS, expected_records, write_release


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path) / "data"


def by_task(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["task"], []).append(record)
    return grouped


@pytest.mark.parametrize("split", ["train", "dev", "test", "test_subset"])
def test_the_samples_choose_records_in_every_split_and_task(release: Path, split: str) -> None:
    records = list(read_release(release, split))
    assert set(by_task(records)) == set(TASKS)
    for task, mine in by_task(records).items():
        got = [(r["idx"], r["raw_input"], r["raw_output"], r["target"]) for r in mine]
        assert got == expected_records(task, split), task
        assert {r["split"] for r in mine} == {split}
        assert sample_count(release, split, task) == len(mine)
    assert all(list(r) == [*RECORD_FIELDS, "idx"] for r in records)


def test_records_are_assembled_with_templates_and_core_tags(release: Path) -> None:
    s2f = list(read_release(release, "train", ["name_conversion-s2f"]))
    assert s2f[0] == {
        "input": "<SMILES> CC(=O)O </SMILES> Give the formula of this SMILES.",
        "output": "<MOLFORMULA> C2H4O2 </MOLFORMULA>",
        "raw_input": "CC(=O)O",
        "raw_output": "C2H4O2",
        "task": "name_conversion-s2f",
        "split": "train",
        "input_core_tag_left": "<SMILES>",
        "input_core_tag_right": "</SMILES>",
        "output_core_tag_left": "<MOLFORMULA>",
        "output_core_tag_right": "</MOLFORMULA>",
        "target": None,
        "sample_id": None,
        "idx": 2,
    }
    assert (s2f[1]["input"], s2f[1]["output"]) == (
        "What is the molecular formula of the compound <SMILES> CCO </SMILES> ?",
        "The formula is <MOLFORMULA> C2H6O </MOLFORMULA> .",
    )


def test_dict_outputs_give_one_record_per_target(release: Path) -> None:
    sider = list(read_release(release, "train", ["property_prediction-sider"]))
    assert [(r["idx"], r["target"], r["output"]) for r in sider] == [
        (0, "Cardiac disorders", "<BOOLEAN> Yes </BOOLEAN>"),
        (0, "Hepatobiliary disorders", "<BOOLEAN> No </BOOLEAN>"),
        (1, "Cardiac disorders", "<BOOLEAN> No </BOOLEAN>"),
    ]


def test_a_null_core_tag_leaves_the_answer_bare(release: Path) -> None:
    (first, _) = read_release(release, "train", ["molecule_captioning"])
    assert first["input"] == "Describe the molecule <SMILES> CCN </SMILES> ."
    assert first["output"] == first["raw_output"] == "The molecule is ethylamine."
    assert (first["output_core_tag_left"], first["output_core_tag_right"]) == (None, None)


def test_one_input_may_have_several_gold_answers(release: Path) -> None:
    retro = list(read_release(release, "test", ["retrosynthesis"]))
    assert [(r["idx"], r["raw_input"], r["raw_output"]) for r in retro[:2]] == [
        (0, "CC(=O)OCC", "CC(=O)O.CCO"),
        (1, "CC(=O)OCC", "CC(=O)Cl.CCO"),
    ]
    assert retro[1]["output"] == "From <SMILES> CC(=O)Cl.CCO </SMILES> ."


def test_selfies_read_raw_selfies_only_and_retag(release: Path) -> None:
    records = list(read_release(release, "train", selfies=True))
    for task, mine in by_task(records).items():
        assert [(r["idx"], r["raw_input"], r["raw_output"], r["target"]) for r in mine] == expected_records(
            task, "train", selfies=True
        )
    assert not any("SMILES" in r["input"] + r["output"] for r in records)  # never both
    s2f = by_task(records)["name_conversion-s2f"][0]
    assert s2f["input"] == "<SELFIES> [C][C][=Branch1][C][=O][O] </SELFIES> Give the formula of this SELFIES."
    assert s2f["input_core_tag_left"] == "<SELFIES>" and s2f["output_core_tag_left"] == "<MOLFORMULA>"
    retro = by_task(records)["retrosynthesis"][0]
    assert retro["output"] == "From <SELFIES> [C][C][O].[C][I] </SELFIES> ."


def test_test_subset_reads_the_test_items(release: Path) -> None:
    (record,) = read_release(release, "test_subset", ["name_conversion-s2f"])
    assert (record["split"], record["idx"], record["raw_input"]) == ("test_subset", 1, "O")
    assert record["input"] == "<SMILES> O </SMILES> Give the formula of this SMILES."


def test_finding_the_release_and_reading_it_through_load_records(release: Path) -> None:
    assert release_root(release.parent) == release_root(release) == release
    assert release_root(release / "raw") is None
    assert release_tasks(release, "dev") == sorted(TASKS)
    records = load_records(release.parent, "validation", ["property_prediction-esol"])
    assert records == list(read_release(release, "dev", ["property_prediction-esol"]))
    assert load_records(release.parent, "train", selfies=True)[0]["input_core_tag_left"] == "<SELFIES>"
    assert [r["idx"] for r in read_release(release, "test", ["retrosynthesis"], limit=2)] == [0, 1]


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_what_the_loading_script_asserts_is_a_clear_error(release: Path) -> None:
    s2f = "name_conversion-s2f"
    sample = release / "sample" / "instruction_tuning" / "train" / f"{s2f}.json"
    with pytest.raises(DataError, match=r"no sample file for \['nope'\]"):
        list(read_release(release, "train", ["nope"]))
    with pytest.raises(DataError, match="unknown split"):
        list(read_release(release, "validation"))

    edit_json(sample, lambda v: v["samples"].append({"idx": 9, "template_id": 0}))
    with pytest.raises(DataError, match=rf"{s2f}\.json: samples\[3\]: idx 9 is beyond .*{s2f}\.jsonl \(4 lines\)"):
        list(read_release(release, "train", [s2f]))
    edit_json(sample, lambda v: v["samples"].__setitem__(3, {"idx": 0, "template_id": 5}))
    with pytest.raises(DataError, match=r"samples\[3\]: template_id 5 is not one of the 2 templates"):
        list(read_release(release, "train", [s2f]))
    edit_json(sample, lambda v: v.__setitem__("split", "dev"))
    with pytest.raises(DataError, match="says task .* split 'dev'; expected .* 'train'"):
        list(read_release(release, "train", [s2f]))

    sider = release / "sample" / "instruction_tuning" / "train" / "property_prediction-sider.json"
    edit_json(sider, lambda v: v["samples"][1].pop("target"))
    with pytest.raises(DataError, match=r"samples\[1\]: target None is not a key of the output at .*sider\.jsonl:1"):
        list(read_release(release, "train", ["property_prediction-sider"]))

    raw = release / "raw" / "train" / "property_prediction-esol.jsonl"
    lines = raw.read_text().splitlines()
    raw.write_text("\n".join([lines[0], '{"input": "CCN", "output": 0.93, "task": "property_prediction-esol", '
                              '"split": "train"}', "{broken"]) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=r"esol\.jsonl:2: 'output' must be a string or an object keyed by target"):
        list(read_release(release, "train", ["property_prediction-esol"]))
    raw.write_text("\n".join([lines[0], lines[1].replace('"train"', '"dev"'), "{broken"]) + "\n")
    with pytest.raises(DataError, match=r"esol\.jsonl:2: item of task .* split 'dev'; expected .* 'train'"):
        list(read_release(release, "train", ["property_prediction-esol"]))
    raw.write_text("\n".join([lines[0], lines[1], "{broken"]) + "\n")
    with pytest.raises(DataError, match=r"esol\.jsonl:3: not a JSON object"):
        list(read_release(release, "train", ["property_prediction-esol"]))

    (release / "core_tag" / "retrosynthesis.json").write_text('{"input": ["<SMILES>", null], "output": [null, null]}')
    with pytest.raises(DataError, match=r"retrosynthesis\.json: 'input' must be \[left, right\]"):
        list(read_release(release, "dev", ["retrosynthesis"]))
    (release / "core_tag" / "retrosynthesis.json").unlink()
    with pytest.raises(DataError, match=r"core_tag/retrosynthesis\.json: missing; .*extract the whole data\.zip"):
        list(read_release(release, "dev", ["retrosynthesis"]))
    (release / "raw_selfies" / "dev" / "molecule_captioning.jsonl").unlink()
    with pytest.raises(DataError, match=r"raw_selfies/dev/molecule_captioning\.jsonl: missing"):
        list(read_release(release, "dev", ["molecule_captioning"], selfies=True))
