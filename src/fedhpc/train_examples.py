"""A facility's training examples: where the train split is, and each record as (prompt, completion) or a chat.

Record layouts (one JSON object per line, or one table row; detected per record):

    {"prompt": ..., "completion": ...}
    {"instruction": ..., "input": ..., "output": ...}   prompt = instruction + "\\n\\n" + input (input optional)
    {"input": ..., "output": ...}                        SMolInstruct records (`fedhpc data chem`, `data smolinstruct`):
                                                         prompt = the question, completion = the tagged answer
    {"messages": [{"role": ..., "content": ...}, ...]}  a chat (system, user, assistant turns): trained on every
                                                         assistant turn through the tokenizer's chat template

A `data:` path is one of (docs/inputs.md):

- a JSONL or parquet file, or a folder read recursively (``*.jsonl``, ``*.parquet``).
  If any file sits in a split-named place (``<task>/train.jsonl``, ``train/<task>.jsonl``,
  ``train-00000-of-00002.parquet``, also dev/val/validation/test), only the train ones
  count; a record with a ``split`` field counts only when it is ``"train"``.
- a Hugging Face `datasets` folder written by ``save_to_disk`` (a Dataset, or a
  DatasetDict's ``train`` split). Parquet and these folders are read by
  `fedhpc.train_tables` (the optional extra ``fedhpc[hf]``).
- **the SMolInstruct release** as extracted from data.zip (its `data/` folder or the
  parent): the train split assembled exactly as the release's loading script
  does (`fedhpc.chem.release`), so the model learns question -> answer with core
  tags. Its `raw_selfies/` folder as the path asks for the SELFIES version; the
  release itself (or its `raw/`) means SMILES.

What is never trained on: a raw release file reached any other way (its lines are
molecule-level pairs without a question), and a `data smolinstruct`/`data chem`
output folder as a whole (its dataset/ and facilities/ hold the same records
twice). Both are a `DataError` that says where to point instead.

This module needs neither torch nor RDKit (nor, for JSONL, pyarrow), so `fedhpc validate` can check a
facility's data with it before anything is submitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from fedhpc.chem.partition import PARTITION_INFO
from fedhpc.chem.release import RAW_DIRS, read_release, release_root
from fedhpc.errors import DataError
from fedhpc.json_lines import read_json_lines
from fedhpc.train_tables import dataset_rows, is_saved_dataset, parquet_row_count, parquet_rows

SPLIT_NAMES = frozenset({"train", "dev", "val", "valid", "validation", "test"})
LAYOUTS = ('{"prompt", "completion"}, {"instruction", "input", "output"}, SMolInstruct {"input", "output"} or '
           '{"messages": [{"role", "content"}, ...]}')
DATA_SUFFIXES = (".jsonl", ".parquet")
ROLES = ("system", "user", "assistant")
#: The most turns one chat record may hold: a bound on what an untrusted record makes the worker render.
MAX_TURNS = 512


@dataclass(frozen=True)
class Example:
    """One training pair: the question the model reads and the answer it learns (loss on `completion` only).

    A chat record has `messages` instead, (role, content) per turn, and empty
    prompt and completion: its loss is on every assistant turn, which only the
    tokenizer's chat template can place (`fedhpc.worker.data.encode_chat`).
    """

    prompt: str
    completion: str
    messages: tuple[tuple[str, str], ...] = ()


def read_examples(path: Path) -> list[Example]:
    """Every train example under `path` (see the module docstring), in a fixed order."""
    examples = list(_examples(Path(path), limit=None))
    if not examples:
        raise DataError(f"{path}: no train examples found (empty files, or every record has a non-train split)")
    return examples


@dataclass(frozen=True)
class DataSummary:
    """What `summarize_examples` read: a line for `validate`, and whether chat records need a chat template."""

    line: str
    chats: int


def check_examples(path: Path, limit: int = 20) -> str:
    """Read the first `limit` records of each file (of each task, for the release) and say what was read.

    Raises the `DataError` that training would raise on those records; writes nothing.
    """
    return summarize_examples(path, limit).line


def summarize_examples(path: Path, limit: int = 20) -> DataSummary:
    """`check_examples`, also counting the chat records among those read (`validate` checks the template)."""
    path = Path(path)
    release = _release(path)
    if release is not None:
        root, selfies = release
        tasks = {record["task"] for record in read_release(root, "train", selfies=selfies, limit=limit)}
        version = "SELFIES" if selfies else "SMILES"
        return DataSummary(
            f"SMolInstruct release {root} ({version}): the first {limit} train samples of its {len(tasks)} tasks", 0
        )
    if is_saved_dataset(path):
        rows, records = dataset_rows(path, limit)
        examples = list(_parsed(records))
        what = f"Hugging Face dataset (save_to_disk), {rows} rows in its train split, the first {limit} read"
    else:
        files = train_files(path)
        examples = [example for file in files for example in islice(_read_file(file), limit)]
        parquet = [file for file in files if file.suffix == ".parquet"]
        rows = f" ({sum(map(parquet_row_count, parquet))} parquet rows)" if parquet else ""
        what = f"{len(files)} train file(s){rows}, the first {limit} records of each"
    if not examples:
        raise DataError(f"{path}: no train examples found (empty files, or every record has a non-train split)")
    chats = sum(1 for example in examples if example.messages)
    return DataSummary(f"{what}: {len(examples)} examples" + (f", {chats} of them chats" if chats else ""), chats)


def _examples(path: Path, limit: int | None) -> Iterator[Example]:
    release = _release(path)
    if release is not None:
        root, selfies = release
        for record in read_release(root, "train", selfies=selfies, limit=limit):
            yield Example(record["input"], record["output"])
        return
    if is_saved_dataset(path):
        yield from _parsed(dataset_rows(path, limit)[1])
        return
    for file in train_files(path):
        yield from islice(_read_file(file), limit)


def _release(path: Path) -> tuple[Path, bool] | None:
    """(release root, selfies) when `path` is a release, or its `raw/` or `raw_selfies/` folder."""
    if path.name in RAW_DIRS and release_root(path.parent) == path.parent:
        return path.parent, path.name == "raw_selfies"
    root = release_root(path)
    return None if root is None else (root, False)


def _raw_release_file(file: Path, memo: dict[Path, Path | None]) -> Path | None:
    """The release whose raw/ or raw_selfies/ holds `file`, if any (`memo`: answers per folder so far)."""
    for folder in file.parents:
        if folder not in memo:
            is_raw = folder.name in RAW_DIRS and release_root(folder.parent) == folder.parent
            memo[folder] = folder.parent if is_raw else None
        if memo[folder] is not None:
            return memo[folder]
    return None


def train_files(path: Path) -> list[Path]:
    """The JSONL and parquet files that hold the train split, sorted so every rank sees the same order."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif not path.is_dir():
        raise DataError(f"{path}: no such data file or directory; check the facility's `data` path")
    else:
        if (path / "dataset").is_dir() and (path / "facilities" / PARTITION_INFO).is_file():
            raise DataError(
                f"{path}: a `fedhpc data` output folder; its dataset/ and facilities/ hold the same train records "
                f"twice. Point each facility's data at {path / 'facilities'}/<name>"
            )
        files = sorted(file for file in path.rglob("*") if file.suffix in DATA_SUFFIXES and file.is_file())
        if not files:
            raise DataError(f"{path}: the directory holds no *.jsonl or *.parquet files and is no datasets "
                            "folder (save_to_disk); point data at the file or the saved dataset itself")
    memo: dict[Path, Path | None] = {}
    for file in files:
        release = _raw_release_file(file.resolve(), memo)
        if release is not None:
            raise DataError(
                f"{file}: a raw file of the SMolInstruct release at {release}; its lines are molecule-level items, "
                f"not instructions. Point data at {release} (the worker assembles the train split as the release's "
                "loading script does), or build facility folders with `fedhpc data smolinstruct`"
            )
    if path.is_file():
        return files
    splits = {file: _split_names(file.relative_to(path)) for file in files}
    if not any(splits.values()):
        return files
    train = [file for file in files if "train" in splits[file]]
    if not train:
        raise DataError(f"{path}: files are split into {sorted(set().union(*splits.values()))} but none is 'train'")
    return train


def _split_names(relative: Path) -> set[str]:
    """Split names in a file's folders or name; ``train-00000-of-00002`` (the Hub's shard names) says train."""
    names = (*relative.parent.parts, relative.stem, relative.stem.split("-", 1)[0])
    return {part.lower() for part in names} & SPLIT_NAMES


def _read_file(file: Path) -> Iterator[Example]:
    if file.suffix == ".parquet":
        yield from _parsed(parquet_rows(file))
        return
    records = ((f"{file}:{number}", record) for number, record in read_json_lines(file, "each line must be one object"))
    yield from _parsed(records)


def _parsed(records: Iterator[tuple[str, object]]) -> Iterator[Example]:
    for where, record in records:
        example = parse_record(record, where)
        if example is not None:
            yield example


def parse_record(record: object, where: str) -> Example | None:
    """One record as an `Example`; `None` for a record of another split. `where` is "file:line"."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with keys {LAYOUTS}, got {type(record).__name__}")
    if record.get("split", "train") not in ("train", None):
        return None
    if "messages" in record:
        return Example("", "", _turns(record["messages"], where))
    if "prompt" in record and "completion" in record:
        return Example(_text(record, "prompt", where), _text(record, "completion", where))
    if "instruction" in record and "output" in record:
        prompt = _text(record, "instruction", where)
        extra = _text(record, "input", where) if record.get("input") is not None else ""
        return Example(f"{prompt}\n\n{extra}" if extra else prompt, _text(record, "output", where))
    if "input" in record and "output" in record:
        return Example(_text(record, "input", where), _text(record, "output", where))
    raise DataError(f"{where}: unknown record layout with keys {sorted(record)[:10]}; expected {LAYOUTS}")


def _turns(messages: object, where: str) -> tuple[tuple[str, str], ...]:
    """A chat's turns as (role, content), checked: known roles, text content, an assistant turn after another."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    if len(messages) > MAX_TURNS:
        raise DataError(f"{where}: 'messages' holds {len(messages)} turns, more than the {MAX_TURNS} allowed")
    turns = []
    for index, turn in enumerate(messages):
        at = f"{where}: messages[{index}]"
        if not isinstance(turn, dict) or not {"role", "content"} <= set(turn):
            keys = sorted(turn)[:5] if isinstance(turn, dict) else type(turn).__name__
            raise DataError(f"{at} must be an object with 'role' and 'content', got {keys}")
        if extra := sorted(key for key, value in turn.items() if key not in ("role", "content") and value is not None):
            raise DataError(f"{at}: only 'role' and 'content' are trained on, but it also has {extra[:5]} (tool "
                            "calls and the like); drop them from the record")
        if turn["role"] not in ROLES:
            raise DataError(f"{at}: role {str(turn['role'])[:40]!r} is not one of {', '.join(ROLES)}")
        turns.append((turn["role"], _text(turn, "content", at)))
    if turns[0][0] == "assistant" or all(role != "assistant" for role, _ in turns):
        raise DataError(f"{where}: a chat needs an assistant turn, after a system or user turn (the loss is on "
                        "the assistant's turns)")
    return tuple(turns)


def _text(record: dict[str, object], key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value
