"""Reading record layouts and splits, loss masks, per-rank shards, batching and packing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedhpc.config import DataConfig, ModelConfig
from fedhpc.errors import DataError
from fedhpc.worker.data import (
    IGNORE_INDEX,
    Example,
    batches,
    collate,
    encode_example,
    read_examples,
    shard_indices,
)
from fedhpc.chem.release import read_release
from fedhpc.chem.release_build import build_from_release
from fedhpc.worker.model import build_base_model
from fedhpc.train_examples import check_examples
from fedhpc.worker.tokenizer import build_byte_tokenizer
from smolinstruct_release import write_release


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def test_every_record_layout_parses(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "P", "completion": "C"},
            {"instruction": "Do it.", "input": "x", "output": "X"},
            {"instruction": "Do it.", "input": "", "output": "Y"},
            {"instruction": "Do it.", "output": "Z"},
            {"input": "CCO", "output": "ethanol", "task": "name_conversion-s2i", "raw_input": "CCO"},
        ],
    )
    path.write_text(path.read_text() + "\n")  # blank lines are skipped
    assert read_examples(path) == [
        Example("P", "C"),
        Example("Do it.\n\nx", "X"),
        Example("Do it.", "Y"),
        Example("Do it.", "Z"),
        Example("CCO", "ethanol"),
    ]


def test_unknown_layout_names_file_line_and_expected_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}] * 2 + [{"question": "q"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: unknown record layout") as info:
        read_examples(path)
    assert "question" in str(info.value) and '"completion"' in str(info.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"prompt": 1, "completion": "c"}', "'prompt' must be a string"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"d\.jsonl:2: {expected}"):
        read_examples(path)


def test_missing_or_empty_data_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data file"):
        read_examples(tmp_path / "absent")
    with pytest.raises(DataError, match="no \\*\\.jsonl"):
        read_examples(tmp_path)
    with pytest.raises(DataError, match="no train examples"):
        read_examples(write_jsonl(tmp_path / "e.jsonl", []))


def test_directory_of_plain_files_is_read_recursively_in_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "b", "completion": "1"}])
    write_jsonl(tmp_path / "sub" / "a.jsonl", [{"prompt": "a", "completion": "2"}])
    (tmp_path / "notes.txt").write_text("ignored")
    assert [e.prompt for e in read_examples(tmp_path)] == ["b", "a"]


@pytest.mark.parametrize("layout", ["task_dirs", "split_dirs"])
def test_smolinstruct_directories_use_only_the_train_split(tmp_path: Path, layout: str) -> None:
    for task in ("forward_synthesis", "property_prediction-esol"):
        for split in ("train", "dev", "test"):
            path = tmp_path / (f"{task}/{split}.jsonl" if layout == "task_dirs" else f"{split}/{task}.jsonl")
            write_jsonl(path, [{"input": f"{task} {split}", "output": "o", "task": task}])
    prompts = {e.prompt for e in read_examples(tmp_path)}
    assert prompts == {"forward_synthesis train", "property_prediction-esol train"}


def test_records_with_a_split_field_keep_only_train(tmp_path: Path) -> None:
    splits = ["train", "test", "validation", "train"]
    records = [{"input": str(i), "output": "o", "split": split} for i, split in enumerate(splits)]
    assert [e.prompt for e in read_examples(write_jsonl(tmp_path / "all.jsonl", records))] == ["0", "3"]


def test_split_directory_without_train_is_an_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test" / "t.jsonl", [{"input": "i", "output": "o"}])
    with pytest.raises(DataError, match="none is 'train'"):
        read_examples(tmp_path)


def test_labels_mask_exactly_the_prompt(tokenizer) -> None:
    item = encode_example(tokenizer, Example("What is 2+2?", "4, of course"), seq_len=256)
    assert item is not None
    prompt_len = 1 + len("What is 2+2?".encode())  # BOS + bytes
    completion = [*"4, of course".encode(), tokenizer.eos_token_id]
    assert item.input_ids == [tokenizer.bos_token_id, *"What is 2+2?".encode(), *completion]
    assert item.labels == [IGNORE_INDEX] * prompt_len + completion


def test_truncation_keeps_partial_completions_and_drops_empty_ones(tokenizer) -> None:
    partial = encode_example(tokenizer, Example("abcd", "efgh"), seq_len=7)
    assert partial is not None and len(partial.input_ids) == 7
    assert partial.labels == [IGNORE_INDEX] * 5 + list(b"ef")
    assert encode_example(tokenizer, Example("abcdefgh", "ij"), seq_len=9) is None


def test_chat_template_formats_the_prompt_as_a_user_turn() -> None:
    chat = build_byte_tokenizer()
    chat.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    item = encode_example(chat, Example("hi", "yo"), seq_len=64)
    assert item is not None
    prompt = list(b"<|user|>hi<|assistant|>")
    assert item.input_ids == [*prompt, *b"yo", chat.eos_token_id]
    assert item.labels == [IGNORE_INDEX] * len(prompt) + [*b"yo", chat.eos_token_id]


@pytest.mark.parametrize(("count", "world"), [(10, 1), (10, 2), (11, 3), (64, 4), (5, 5)])
def test_rank_shards_are_disjoint_and_cover_everything(count: int, world: int) -> None:
    shards = [shard_indices(count, rank, world, seed=7) for rank in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(count))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [shard_indices(count, rank, world, seed=7) for rank in range(world)]


def test_shuffle_depends_on_seed_and_tiny_datasets_still_feed_every_rank() -> None:
    assert shard_indices(50, 0, 2, seed=1) != shard_indices(50, 0, 2, seed=2)
    assert all(shard_indices(2, rank, 4, seed=0) for rank in range(4))


def test_batches_right_pad_and_cycle_over_the_shard(tokenizer) -> None:
    examples = [Example("p", "a"), Example("pp", "bbb"), Example("p", "c")]
    stream = batches(examples, tokenizer, DataConfig(seq_len=32), batch_size=2)
    first, second = next(stream), next(stream)
    assert first.input_ids.shape == (2, 7) and first.position_ids is None
    assert first.input_ids[0, 4:].tolist() == [tokenizer.pad_token_id] * 3
    assert first.labels[0, 4:].tolist() == [IGNORE_INDEX] * 3
    assert first.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert second.input_ids[1].tolist()[:4] == first.input_ids[0].tolist()[:4]  # wrapped around
    assert first.num_examples == 2 and first.num_tokens == 2 + 4


def test_packing_restarts_positions_and_respects_seq_len(tokenizer) -> None:
    examples = [Example("ab", "cd")] * 5  # 6 tokens each
    batch = next(batches(examples, tokenizer, DataConfig(seq_len=16, packing=True), batch_size=2))
    assert batch.attention_mask is None and batch.input_ids.shape == (2, 12)
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5] * 2
    assert batch.num_examples == 4
    rows = [[encode_example(tokenizer, Example(p, c), 16)] for p, c in [("a", "b"), ("ab", "cd")]]
    short = collate(rows, 0, packed=True)
    assert short.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1]  # padding is a block of its own


def test_gpu_batches_pad_to_a_multiple_of_the_length_but_never_past_seq_len(tokenizer) -> None:
    """Few distinct shapes on GPUs (cuDNN plans, compiled kernels reused); padding never changes a label."""
    examples = [Example("a" * 60, "b" * 10), Example("ab", "cd")]
    plain = next(batches(examples, tokenizer, DataConfig(seq_len=512), batch_size=2))
    padded = next(batches(examples, tokenizer, DataConfig(seq_len=512), batch_size=2, length_multiple=64))
    capped = next(batches(examples, tokenizer, DataConfig(seq_len=100), batch_size=2, length_multiple=64))
    longest = plain.input_ids.shape[1]
    assert 64 < longest < 100 and padded.input_ids.shape[1] == 128 and capped.input_ids.shape[1] == 100
    assert padded.num_tokens == plain.num_tokens and padded.attention_mask[:, longest:].sum() == 0
    assert torch.equal(padded.labels[:, :longest], plain.labels)


def test_packed_examples_do_not_attend_to_each_other(tokenizer) -> None:
    """The packing docstring's claim: position restarts without a mask give a block-diagonal mask."""
    model = build_base_model(ModelConfig()).model.eval()
    a, b = (encode_example(tokenizer, Example(p, c), 64) for p, c in [("first", "one"), ("second one", "two")])
    packed = collate([[a, b]], tokenizer.pad_token_id, packed=True)
    with torch.no_grad():
        joint = model(**packed.model_inputs(torch.device("cpu")), use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits[0]
    assert torch.allclose(joint[len(a.input_ids) :], alone, atol=1e-5)


def pairs(records) -> list[Example]:
    return [Example(r["input"], r["output"]) for r in records]


def test_the_release_itself_trains_on_its_assembled_train_split(tmp_path: Path) -> None:
    release = write_release(tmp_path)
    root = release / "data"
    expected = pairs(read_release(root, "train"))
    assert read_examples(release) == read_examples(root) == read_examples(root / "raw") == expected
    sider = Example("Is <SMILES> CCO </SMILES> known for this kind of side effect?", "<BOOLEAN> No </BOOLEAN>")
    assert sider in expected  # a dict output, one record per target
    assert not any(e.prompt == "CCO" for e in expected)  # never a bare raw pair
    assert not any("SELFIES" in e.prompt for e in expected)  # raw_selfies/ is not read unless asked
    assert read_examples(root / "raw_selfies") == pairs(read_release(root, "train", selfies=True))


@pytest.mark.parametrize("where", ["data/raw/train", "data/raw/train/property_prediction-sider.jsonl", "."])
def test_a_raw_release_file_is_never_read_as_plain_records(tmp_path: Path, where: str) -> None:
    release = write_release(tmp_path / "scratch")
    with pytest.raises(DataError, match=r"\.jsonl: a raw file of the SMolInstruct release at .*Point data at") as info:
        read_examples(release / where if where != "." else tmp_path)
    assert str(release / "data") in str(info.value)


def test_a_built_smolinstruct_dataset_trains_on_its_records(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_from_release(write_release(tmp_path), out, "a:s2f+esol,b:sider+captioning+retrosynthesis+bbbp")
    facility = [json.loads(line) for f in sorted((out / "facilities" / "b" / "train").glob("*.jsonl"))
                for line in f.read_text().splitlines()]  # fmt: skip
    assert read_examples(out / "facilities" / "b") == pairs(facility)
    assert read_examples(out / "dataset") == pairs(read_release(tmp_path / "SMolInstruct" / "data", "train"))
    with pytest.raises(DataError, match=r"a `fedhpc data` output folder; .*facilities\)?/<name>"):
        read_examples(out)


def test_a_record_it_cannot_use_names_file_line_and_what_was_expected(tmp_path: Path) -> None:
    good = {"input": "Q <SMILES> C </SMILES>", "output": "<BOOLEAN> Yes </BOOLEAN>", "task": "t", "split": "train"}
    dict_output = {**good, "output": {"Cardiac disorders": "Yes"}}
    path = write_jsonl(tmp_path / "train" / "property_prediction-sider.jsonl", [good, dict_output])
    with pytest.raises(DataError, match=r"sider\.jsonl:2: 'output' must be a string, got dict"):
        read_examples(tmp_path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"smiles": "C", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"sider\.jsonl:2: unknown record layout with keys \['label', 'smiles'\]"):
        read_examples(path)


def test_check_reads_only_the_first_records_and_raises_what_training_would(tmp_path: Path) -> None:
    records = [{"prompt": str(i), "completion": "c"} for i in range(30)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    path.write_text(path.read_text() + "{broken\n")  # line 31: beyond a check of 20
    assert check_examples(path, limit=20) == "1 train file(s), the first 20 records of each: 20 examples"
    with pytest.raises(DataError, match=r"d\.jsonl:31: not valid JSON"):
        read_examples(path)
    with pytest.raises(DataError, match=r"d\.jsonl:31: not valid JSON"):
        check_examples(path, limit=40)
    release = write_release(tmp_path / "r")
    assert "SMolInstruct release" in check_examples(release) and "its 6 tasks" in check_examples(release)
    sample = release / "data" / "sample" / "instruction_tuning" / "train" / "retrosynthesis.json"
    sample.write_text(sample.read_text().replace('"idx": 0', '"idx": 7'))
    with pytest.raises(DataError, match=r"retrosynthesis\.json: samples\[0\]: idx 7 is beyond"):
        check_examples(release)


def test_the_worker_reads_data_without_rdkit_and_validate_without_torch() -> None:
    code = (
        "import sys, fedhpc.train_examples; assert 'torch' not in sys.modules, 'torch'; "
        "import fedhpc.worker.data; "
        "loaded = [m for m in ('rdkit', 'rdchiral', 'nltk', 'rouge_score') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
