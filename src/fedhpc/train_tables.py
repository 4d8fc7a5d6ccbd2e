"""Training records stored as tables: parquet files and Hugging Face `datasets` folders (`save_to_disk`).

Each row becomes the same dict a JSONL line would be, so `fedhpc.train_examples`
parses every form with one `parse_record` and one set of errors; a row is named
``<file>[row N]`` (N counted from 0, as pyarrow and pandas count). A null cell
counts as an absent key (a table has every column in every row). Only the
columns a record layout uses are read (`RECORD_COLUMNS`), so a table that also
holds large unrelated columns (images, embeddings) costs nothing extra, and rows
are read in batches of `BATCH_ROWS`, so a caller that stops early (validate's
first records) reads no further.

`pyarrow` (parquet) and `datasets` (save_to_disk folders) are the optional
extra ``fedhpc[hf]``, imported only when such data is read. A `datasets` folder
is Arrow files plus JSON; nothing in it is unpickled.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from fedhpc.errors import DataError

#: The columns any record layout reads (fedhpc.train_examples.LAYOUTS); others are never loaded.
RECORD_COLUMNS = ("prompt", "completion", "instruction", "input", "output", "messages", "split")
BATCH_ROWS = 1024
EXTRA_HINT = "pip install 'fedhpc[hf]'"
#: Files that `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write beside the Arrow data.
DATASET_MARKERS = ("dataset_dict.json", "state.json")


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and any((path / marker).is_file() for marker in DATASET_MARKERS)


def parquet_rows(file: Path, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for each row of a parquet file, up to `limit` rows."""
    pq = _import("pyarrow.parquet", "reading parquet needs pyarrow")
    try:
        table = pq.ParquetFile(file)
        columns = _record_columns(file, table.schema_arrow.names)
        batches = table.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        rows = (row for batch in batches for row in batch.to_pylist())
        yield from ((f"{file}[row {n}]", _present(row)) for n, row in enumerate(islice(rows, limit)))
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid and ArrowIOError are ValueError and OSError
        raise DataError(f"{file}: not a readable parquet file ({e})") from e


def parquet_row_count(file: Path) -> int:
    """Rows in a parquet file, from its footer (nothing else is read)."""
    pq = _import("pyarrow.parquet", "reading parquet needs pyarrow")
    try:
        return pq.ParquetFile(file).metadata.num_rows
    except (OSError, ValueError) as e:
        raise DataError(f"{file}: not a readable parquet file ({e})") from e


def dataset_rows(path: Path, limit: int | None = None) -> tuple[int, Iterator[tuple[str, dict[str, Any]]]]:
    """(rows in the train split, (where, record) for each of its first `limit` rows) of a `save_to_disk` folder.

    A `DatasetDict` must have a ``train`` split; a single `Dataset` counts whole
    unless it was saved as another named split (``test``, ``validation``, ...).
    """
    dataset = _load_train_split(path)
    columns = _record_columns(path, dataset.column_names)
    count = len(dataset)
    chosen = dataset.select_columns(columns)
    if limit is not None and limit < count:
        chosen = chosen.select(range(limit))

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        number = 0
        for batch in chosen.iter(batch_size=BATCH_ROWS):
            for values in zip(*(batch[name] for name in columns), strict=True):
                yield f"{path}[train row {number}]", _present(dict(zip(columns, values, strict=True)))
                number += 1

    return count, rows()


def _load_train_split(path: Path) -> Any:
    datasets = _import("datasets", "reading a Hugging Face datasets folder needs the datasets package")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not a readable datasets folder (save_to_disk) ({e})") from e
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: a DatasetDict with splits {sorted(loaded)} but no 'train'; save the "
                            "training split as 'train', or point data at that split's folder")
        return loaded["train"]
    split = str(loaded.split) if loaded.split is not None else "train"
    if split != "train":
        raise DataError(f"{path}: a saved {split!r} split; a facility trains on its 'train' split only")
    return loaded


def _present(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if value is not None}


def _record_columns(where: Path, names: list[str]) -> list[str]:
    columns = [name for name in RECORD_COLUMNS if name in names]
    if not any(name != "split" for name in columns):
        raise DataError(f"{where}: columns {sorted(names)[:10]} hold no training record; expected prompt + "
                        "completion, instruction + output (+ input), input + output, or messages")
    return columns


def _import(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DataError(f"{why}, the optional extra fedhpc[hf]: {EXTRA_HINT}") from e
