"""A facility's training examples: where the train split is, and each record as (prompt, completion).

Record layouts (one JSON object per line; detected per record):

    {"prompt": ..., "completion": ...}
    {"instruction": ..., "input": ..., "output": ...}   prompt = instruction + "\\n\\n" + input (input optional)
    {"input": ..., "output": ...}                        SMolInstruct records (`fedhpc data chem`, `data smolinstruct`):
                                                         prompt = the question, completion = the tagged answer

A `data:` path is one of:

- a JSONL file, or a folder read recursively (``*.jsonl``). If any file sits in a
  split-named place (``<task>/train.jsonl``, ``train/<task>.jsonl``, also
  dev/val/validation/test), only the train ones count; a record with a ``split``
  field counts only when it is ``"train"``.
- **the SMolInstruct release** as extracted from data.zip (its `data/` folder or the
  parent): the train split assembled exactly as the release's loading script
  does (`fedhpc.chem.release`), so the model learns question -> answer with core
  tags. Its `raw_selfies/` folder as the path asks for the SELFIES version; the
  release itself (or its `raw/`) means SMILES.

What is never trained on: a raw release file reached any other way (its lines are
molecule-level pairs without a question), and a `data smolinstruct`/`data chem`
output folder as a whole (its dataset/ and facilities/ hold the same records
twice). Both are a `DataError` that says where to point instead.

This module needs neither torch nor RDKit, so `fedhpc validate` can check a
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

SPLIT_NAMES = frozenset({"train", "dev", "val", "valid", "validation", "test"})
LAYOUTS = '{"prompt", "completion"}, {"instruction", "input", "output"} or SMolInstruct {"input", "output"}'


@dataclass(frozen=True)
class Example:
    """One training pair: the question the model reads and the answer it learns (loss on `completion` only)."""

    prompt: str
    completion: str


def read_examples(path: Path) -> list[Example]:
    """Every train example under `path` (see the module docstring), in a fixed order."""
    examples = list(_examples(Path(path), limit=None))
    if not examples:
        raise DataError(f"{path}: no train examples found (empty files, or every record has a non-train split)")
    return examples


def check_examples(path: Path, limit: int = 20) -> str:
    """Read the first `limit` records of each file (of each task, for the release) and say what was read.

    Raises the `DataError` that training would raise on those records; writes nothing.
    """
    path = Path(path)
    release = _release(path)
    if release is not None:
        root, selfies = release
        tasks = {record["task"] for record in read_release(root, "train", selfies=selfies, limit=limit)}
        version = "SELFIES" if selfies else "SMILES"
        return f"SMolInstruct release {root} ({version}): the first {limit} train samples of its {len(tasks)} tasks"
    files = train_files(path)
    count = sum(1 for file in files for _ in islice(_read_jsonl(file), limit))
    if not count:
        raise DataError(f"{path}: no train examples found (empty files, or every record has a non-train split)")
    return f"{len(files)} train file(s), the first {limit} records of each: {count} examples"


def _examples(path: Path, limit: int | None) -> Iterator[Example]:
    release = _release(path)
    if release is not None:
        root, selfies = release
        for record in read_release(root, "train", selfies=selfies, limit=limit):
            yield Example(record["input"], record["output"])
        return
    for file in train_files(path):
        yield from islice(_read_jsonl(file), limit)


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
    """The JSONL files that hold the train split, sorted so every rank sees the same order."""
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
        files = sorted(path.rglob("*.jsonl"))
        if not files:
            raise DataError(f"{path}: the directory holds no *.jsonl files")
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
    return {part.lower() for part in (*relative.parent.parts, relative.stem)} & SPLIT_NAMES


def _read_jsonl(file: Path) -> Iterator[Example]:
    for number, record in read_json_lines(file, "each line must be one object"):
        example = parse_record(record, f"{file}:{number}")
        if example is not None:
            yield example


def parse_record(record: object, where: str) -> Example | None:
    """One record as an `Example`; `None` for a record of another split. `where` is "file:line"."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with keys {LAYOUTS}, got {type(record).__name__}")
    if record.get("split", "train") != "train":
        return None
    if "prompt" in record and "completion" in record:
        return Example(_text(record, "prompt", where), _text(record, "completion", where))
    if "instruction" in record and "output" in record:
        prompt = _text(record, "instruction", where)
        extra = _text(record, "input", where) if record.get("input") is not None else ""
        return Example(f"{prompt}\n\n{extra}" if extra else prompt, _text(record, "output", where))
    if "input" in record and "output" in record:
        return Example(_text(record, "input", where), _text(record, "output", where))
    raise DataError(f"{where}: unknown record layout with keys {sorted(record)[:10]}; expected {LAYOUTS}")


def _text(record: dict[str, object], key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value
