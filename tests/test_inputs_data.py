"""A facility's data as parquet, a `datasets` save_to_disk folder or chat records: read as the JSONL would be.

Every form is written here by its own library (pyarrow, datasets) from the same
records, and must read back to the same examples; the chat masking is checked on
the byte tokenizer, where each token is one byte, so the labelled span decodes
to exactly the text that carries loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedhpc.cli import app
from fedhpc.errors import DataError
from fedhpc.train_examples import Example, check_examples, read_examples
from fedhpc.worker.data import IGNORE_INDEX, encode_example
from fedhpc.worker.tokenizer import build_byte_tokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name H2O."},
    {"role": "assistant", "content": "water"},
    {"role": "user", "content": "And NaCl?"},
    {"role": "assistant", "content": "salt"},
]
RECORDS = [
    {"prompt": "P", "completion": "C"},
    {"instruction": "Do it.", "input": "x", "output": "X"},
    {"input": "CCO", "output": "ethanol"},
    {"messages": CHAT},
    {"prompt": "held out", "completion": "no", "split": "test"},
]
EXPECTED = [
    Example("P", "C"),
    Example("Do it.\n\nx", "X"),
    Example("CCO", "ethanol"),
    Example("", "", tuple((turn["role"], turn["content"]) for turn in CHAT)),
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def table(records: list[dict]) -> dict[str, list]:
    """Records as columns: a table has every column in every row (null where a record lacks the key)."""
    columns = dict.fromkeys(key for record in records for key in record)
    return {key: [record.get(key) for record in records] for key in columns}


def dataset(records: list[dict], split: str | None = None):
    return datasets.Dataset.from_dict(table(records), split=split)


def write_parquet(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table(records)), path)
    return path


def test_jsonl_parquet_and_a_saved_dataset_read_to_the_same_examples(tmp_path: Path) -> None:
    assert read_examples(write_jsonl(tmp_path / "records.jsonl", RECORDS)) == EXPECTED
    assert read_examples(write_parquet(tmp_path / "records.parquet", RECORDS)) == EXPECTED
    splits = datasets.DatasetDict({"train": dataset(RECORDS),
                                   "test": dataset([{"prompt": "T", "completion": "t"}])})
    splits.save_to_disk(tmp_path / "dict")
    assert read_examples(tmp_path / "dict") == EXPECTED
    dataset(RECORDS).save_to_disk(tmp_path / "single")
    assert read_examples(tmp_path / "single") == EXPECTED
    assert "5 rows in its train split, the first 20 read: 4 examples, 1 of them chats" in check_examples(tmp_path / "dict")


def test_a_folder_of_hub_style_parquet_shards_reads_only_the_train_ones(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data" / "train-00000-of-00002.parquet", RECORDS[:2])
    write_parquet(tmp_path / "data" / "train-00001-of-00002.parquet", RECORDS[2:4])
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [{"prompt": "T", "completion": "t"}])
    assert read_examples(tmp_path) == EXPECTED
    assert check_examples(tmp_path) == "2 train file(s) (4 parquet rows), the first 20 records of each: 4 examples, " \
                                       "1 of them chats"


def test_chat_loss_falls_on_the_assistant_turns_only() -> None:
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    encoded = encode_example(tokenizer, EXPECTED[3], seq_len=1024)
    assert encoded is not None
    text = tokenizer.decode(encoded.input_ids)
    assert text == "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in CHAT)
    learned = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert [label for label in encoded.labels if label != IGNORE_INDEX] == learned
    assert tokenizer.decode(learned) == "water<|im_end|>\nsalt<|im_end|>\n"
    truncated = encode_example(tokenizer, EXPECTED[3], seq_len=text.index("salt"))
    assert truncated is not None and tokenizer.decode([t for t, label in zip(truncated.input_ids, truncated.labels,
                                                                             strict=True) if label >= 0]) == "water<|im_end|>\n"


def test_chat_records_need_a_template_and_one_that_extends_each_turn() -> None:
    tokenizer = build_byte_tokenizer()
    with pytest.raises(DataError, match="need a tokenizer with a chat template"):
        encode_example(tokenizer, EXPECTED[3], seq_len=256)
    tokenizer.chat_template = "{{ messages[-1]['content'] }}"  # renders only the last turn: no prefixes
    with pytest.raises(DataError, match="does not render a conversation as a prefix"):
        encode_example(tokenizer, EXPECTED[3], seq_len=256)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], r"'messages' must be a non-empty list"),
        ([{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}], r"messages\[1\]: role 'robot'"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}], r"messages\[1\]: 'content' must"),
        ([{"role": "user", "content": "q"}], "needs an assistant turn"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "needs an assistant turn"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "tool_calls": [1]}],
         r"also has \['tool_calls'\]"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 257, "more than the 512"),
    ],
)
def test_bad_chat_records_name_the_file_line_and_turn(tmp_path: Path, messages: list, error: str) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}, {"messages": messages}])
    with pytest.raises(DataError, match=f"chat.jsonl:2: .*{error}"):
        read_examples(path)


def test_bad_tables_name_the_file_row_and_column(tmp_path: Path) -> None:
    ints = write_parquet(tmp_path / "ints.parquet", [{"prompt": "a", "completion": 5}, {"prompt": "c", "completion": 7}])
    with pytest.raises(DataError, match=r"ints\.parquet\[row 0\]: 'completion' must be a string, got int"):
        read_examples(ints)
    other = write_parquet(tmp_path / "other.parquet", [{"text": "a", "label": 1}])
    with pytest.raises(DataError, match=r"other\.parquet: columns \['label', 'text'\] hold no training record"):
        read_examples(other)
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"garbage\.parquet: not a readable parquet file"):
        check_examples(tmp_path / "garbage.parquet")
    datasets.DatasetDict({"validation": dataset(RECORDS[:1])}).save_to_disk(tmp_path / "nosplit")
    with pytest.raises(DataError, match=r"nosplit: a DatasetDict with splits \['validation'\] but no 'train'"):
        read_examples(tmp_path / "nosplit")
    dataset(RECORDS[:1], split="test").save_to_disk(tmp_path / "testsplit")
    with pytest.raises(DataError, match=r"testsplit: a saved 'test' split"):
        read_examples(tmp_path / "testsplit")
    dataset([{"prompt": "a", "completion": None}]).save_to_disk(tmp_path / "nulls")
    with pytest.raises(DataError, match=r"nulls\[train row 0\]: unknown record layout with keys \['prompt'\]"):
        read_examples(tmp_path / "nulls")


def test_without_the_hf_extra_reading_parquet_says_which_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_parquet(tmp_path / "records.parquet", RECORDS)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # what `import pyarrow.parquet` meets without pyarrow
    with pytest.raises(DataError, match=r"reading parquet needs pyarrow, the optional extra fedhpc\[hf\]: pip install"):
        read_examples(path)


def test_validate_reads_each_form_and_refuses_chats_for_the_byte_tokenizer(tmp_path: Path) -> None:
    write_parquet(tmp_path / "alpha.parquet", RECORDS[:3])
    datasets.DatasetDict({"train": dataset(RECORDS[:3])}).save_to_disk(tmp_path / "beta")
    write_jsonl(tmp_path / "gamma.jsonl", [{"messages": CHAT}])
    facilities = "".join(f"  - name: {name}\n    data: {data}\n"
                         for name, data in (("alpha", "alpha.parquet"), ("beta", "beta"), ("gamma", "gamma.jsonl")))
    (tmp_path / "experiment.yaml").write_text(f"name: t\nfacilities:\n{facilities}")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "experiment.yaml")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "data ok: 1 train file(s) (3 parquet rows), the first 20 records of each: 3 examples" in output
    assert "data ok: Hugging Face dataset (save_to_disk), 3 rows in its train split, the first 20 read: 3 examples" \
        in output
    assert "facility gamma: " in output and "holds chat (messages) records, which need a chat template" in output
