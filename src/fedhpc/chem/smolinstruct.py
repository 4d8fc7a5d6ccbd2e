"""Read and write instruction records in SMolInstruct's layouts.

Three layouts are read, tried in this order:

1. **The SMolInstruct release** (osunlp/SMolInstruct on Hugging Face, `data.zip`
   extracted; point at the folder holding `raw/`, or at its parent if that holds
   `data/`): records assembled exactly as the release's loading script does, by
   `release.read_release` (see there). `selfies=True` reads `raw_selfies/`.
2. **Ours**, which mirrors the release's raw tree but holds finished records:
   `<split>/<task>.jsonl`, splits `train`, `dev`, `test`, `test_subset`, every
   line one record with the fields in `tasks.RECORD_FIELDS`. Per-facility
   directories are the same with `train/` only.
3. **Plain JSONL**: a `.jsonl` file, or a folder of them, whose lines carry at least
   `input` and `output`. A file named after a split (`test.jsonl`, or
   `<task>/test.jsonl`) holds that split; otherwise a line's `split` field decides,
   and a line without one counts as `train`.

Every record also gets `idx`, what a prediction line names it by: in the
release, the item's line in `raw/<split>/<task>.jsonl` (as LlaSMol uses it); in
our layout, the record's 0-based position in its task file; in plain JSONL, its
position among the records of its task and split, in reading order.

Split names follow the release (`train`, `dev`, `test`, `test_subset`);
`validation` and `valid` are accepted for `dev`, as the Hugging Face builder names it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedhpc.chem.extraction import extract_core
from fedhpc.chem.release import read_release, release_root
from fedhpc.chem.tasks import RECORD_FIELDS, TASKS
from fedhpc.errors import DataError
from fedhpc.json_lines import read_json_lines

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev"}
KNOWN_SPLITS = (*SPLITS, "test_subset")

EXPECTED_LAYOUTS = (
    "expected one of: <split>/<task>.jsonl (fedhpc layout, splits train/dev/test/test_subset); "
    "the SMolInstruct release extracted from data.zip (raw/<split>/<task>.jsonl with core_tag/, "
    "template/ and sample/); or .jsonl files whose lines hold 'input' and 'output'"
)


def canonical_split(split: str) -> str:
    """`validation`/`valid`/`val` -> `dev`; other known names unchanged; unknown names are an error."""
    name = SPLIT_ALIASES.get(split, split)
    if name not in KNOWN_SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(KNOWN_SPLITS)} (or 'validation')")
    return name


def load_records(
    path: Path | str, split: str = "train", tasks: Sequence[str] | None = None, *, selfies: bool = False
) -> list[dict[str, Any]]:
    """Every record of `split` under `path`, in a deterministic order (task name, then file order).

    `tasks=None` means all tasks found. Each record has all of `RECORD_FIELDS`
    (`sample_id` and unknown core tags may be None) and `idx` (see the module
    docstring). `selfies` applies to the release only. Raises `DataError` naming
    the path and the layouts expected when the path is missing or nothing matches.
    """
    records = list(iter_records(path, split, tasks, selfies=selfies))
    if not records:
        which = "" if tasks is None else f" for tasks {sorted(set(tasks))}"
        raise DataError(f"{path}: no records of split {split!r}{which}; {EXPECTED_LAYOUTS}")
    return records


def iter_records(
    path: Path | str, split: str = "train", tasks: Sequence[str] | None = None, *, selfies: bool = False
) -> Iterator[dict[str, Any]]:
    """`load_records` one record at a time, and nothing (rather than an error) when nothing matches.

    For reading a large split when only a field of each record is kept: the
    release's train split holds over three million records, which as dicts would
    take gigabytes.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory; {EXPECTED_LAYOUTS}")
    split = canonical_split(split)
    wanted = None if tasks is None else set(tasks)
    release = release_root(root)
    if release is not None:
        yield from read_release(release, split, tasks, selfies=selfies)
        return
    if (root / split).is_dir() and any((root / split).glob("*.jsonl")):
        # our layout keeps a task's records in <split>/<task>.jsonl: other tasks' files are not even read
        files = [file for file in sorted((root / split).glob("*.jsonl")) if wanted is None or file.stem in wanted]
        records = (
            {**record, "idx": idx} for file in files for idx, record in enumerate(_read_jsonl(file, split, file.stem))
        )
    else:
        records = _numbered(_read_plain(root, split))
    yield from (record for record in records if wanted is None or record["task"] in wanted)


def write_split(root: Path, split: str, records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Write `records` as `root/<split>/<task>.jsonl`, one file per task; returns counts per task.

    One JSON object per line, keys in `RECORD_FIELDS` order, UTF-8 unescaped, so
    the same records always give the same bytes.
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for task, items in sorted(by_task.items()):
        (folder / f"{task}.jsonl").write_text("".join(record_line(rec) for rec in items), encoding="utf-8")
    return {task: len(items) for task, items in sorted(by_task.items())}


def record_line(record: dict[str, Any]) -> str:
    """One record as a line of our layout: the `RECORD_FIELDS` in order (`idx` is implied by the position)."""
    return json.dumps({key: record.get(key) for key in RECORD_FIELDS}, ensure_ascii=False) + "\n"


@contextmanager
def replacing_dir(out: Path, marker: str) -> Iterator[Path]:
    """Yield an empty folder beside `out` that replaces `out` whole when the block succeeds.

    A crash leaves the old `out` (or none), never half a dataset. An existing
    `out` is replaced only if it holds `marker` (a file we wrote), so a typo in
    `--out` cannot wipe someone's folder; a non-empty folder without it is refused.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise DataError(f"{out}: exists and was not written by fedhpc (no {marker}); choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# --- ours and plain JSONL -------------------------------------------------------------------------


def _read_plain(root: Path, split: str) -> Iterator[dict[str, Any]]:
    files = [root] if root.is_file() else sorted(root.glob("*.jsonl")) + sorted(root.glob("*/*.jsonl"))
    for file in files:
        file_split = SPLIT_ALIASES.get(file.stem, file.stem)
        if file_split in KNOWN_SPLITS:
            if file_split == split:
                default_task = file.parent.name if file.parent != root and file != root else None
                yield from _read_jsonl(file, split, default_task)
            continue
        for record in _read_jsonl(file, None, None):
            if record["split"] == split:
                yield record


def _numbered(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each record with `idx`: its position among the records of its task (and split), in order."""
    seen: dict[tuple[str, str], int] = {}
    for record in records:
        key = (record["task"], record["split"])
        yield {**record, "idx": seen.get(key, 0)}
        seen[key] = seen.get(key, 0) + 1


def _read_jsonl(file: Path, split: str | None, default_task: str | None) -> Iterator[dict[str, Any]]:
    """Records of one JSONL file, completed to all fields; `split=None` keeps each line's own split."""
    for number, item in read_json_lines(file, EXPECTED_LAYOUTS):
        if not isinstance(item, dict) or not isinstance(item.get("input"), str) or "output" not in item:
            raise DataError(f"{file}:{number}: a record needs string fields 'input' and 'output'; {EXPECTED_LAYOUTS}")
        yield _complete(item, split, default_task, file, number)


def _complete(
    item: dict[str, Any], split: str | None, default_task: str | None, file: Path, number: int
) -> dict[str, Any]:
    """All `RECORD_FIELDS` for one line: task from the file name, missing core tags from our task
    table, and a missing `raw_output` cut out of `output` between its core tags (so it can be scored)."""
    task = item.get("task") or default_task
    if task is None:
        raise DataError(f"{file}:{number}: record has no 'task' field and the file name does not give one")
    record = {key: item.get(key) for key in RECORD_FIELDS}
    record.update(task=task, split=split or canonical_split(item.get("split") or "train"))
    spec = TASKS.get(task)
    if spec is not None and record["output_core_tag_left"] is None:
        record.update(
            input_core_tag_left=spec.input_tags[0],
            input_core_tag_right=spec.input_tags[1],
            output_core_tag_left=spec.output_tags[0],
            output_core_tag_right=spec.output_tags[1],
        )
    if record["raw_output"] is None and record["output_core_tag_left"] is not None:
        record["raw_output"] = extract_core(
            str(record["output"]), record["output_core_tag_left"], record["output_core_tag_right"]
        )
    return record
