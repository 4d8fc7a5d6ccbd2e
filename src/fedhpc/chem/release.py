"""The SMolInstruct release (osunlp/SMolInstruct, `data.zip`), read as its own loading script reads it.

The extracted archive (a folder `data/`) holds molecule-level items and, apart
from them, the choices that turn items into instruction records:

    raw/<split>/<task>.jsonl          one item a line: input, output (a string, or a dict
                                      keyed by target for SIDER), task, split
    raw_selfies/<split>/<task>.jsonl  the same items with SELFIES in place of SMILES
    core_tag/<task>.json              {"input": [left, right], "output": [left, right]}; [null, null]
                                      where a side has no tag (molecule_captioning's output)
    template/<name>/<task>.json       [{"input": "..<INPUT>..", "output": "..<OUTPUT>.."}, ...]
    sample/instruction_tuning/<split>/<task>.json
                                      {"task", "split", "template_name", "samples": [{"idx",
                                      "template_id", "target" (dict outputs only)}]}

The loading script (SMolInstruct.py, `_generate_instruction_examples`) makes one
record per entry of the sample file, in its order: the raw item at line `idx`,
the template `template_id`, the input and output wrapped in their core tags
("<SMILES> CCO </SMILES>", a single space each side; left bare where the tag is
null) and put in place of `<INPUT>` and `<OUTPUT>`, a dict output narrowed to the
sample's `target`. Several records may share an input and differ in the answer
(forward_synthesis, retrosynthesis: several gold answers). `test_subset` (at most
200 samples a task) has its own sample files over `raw/test`. With SELFIES the
items come from `raw_selfies/`, "SMILES" becomes "SELFIES" in the templates and
`<SMILES>` core tags become `<SELFIES>`; the script never mixes the two. We do the
same and add `idx` (the item's 0-based line, which LlaSMol's predictions refer to).

Everything the script asserts is a `DataError` here, naming the file (and line)
and what was expected. Raw files are kept as text lines and only the sampled ones
parsed, so a task of a million items costs its text, not a million dicts.
Standard library only: the worker reads releases with this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedhpc.chem.tasks import RECORD_FIELDS
from fedhpc.errors import DataError

RELEASE_SPLITS = ("train", "dev", "test", "test_subset")
SAMPLE_GROUP = "instruction_tuning"
RAW_DIRS = ("raw", "raw_selfies")
_MARKS = ("sample", "template", "core_tag")


def release_root(path: Path | str) -> Path | None:
    """The release folder at or just below `path` (the extracted `data/` or its parent); None if neither is one.

    A folder counts as a release when it has `raw/` or `raw_selfies/` beside one of
    `sample/`, `template/`, `core_tag/`; what else is missing is reported when read.
    """
    for candidate in (Path(path), Path(path) / "data"):
        if any((candidate / d).is_dir() for d in RAW_DIRS) and any((candidate / d).is_dir() for d in _MARKS):
            return candidate
    return None


def release_tasks(root: Path, split: str) -> list[str]:
    """Tasks with a sample file for `split`, sorted; what a release offers when no task is named."""
    return sorted(file.stem for file in (root / "sample" / SAMPLE_GROUP / split).glob("*.json"))


def read_release(
    root: Path,
    split: str,
    tasks: Sequence[str] | None = None,
    *,
    selfies: bool = False,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of `split` (train, dev, test, test_subset), task by task in sorted order.

    `tasks=None` takes every task with a sample file for the split. `limit` stops
    after that many samples per task (for quick checks). Each record has every key
    of `RECORD_FIELDS` plus `idx`.
    """
    if split not in RELEASE_SPLITS:
        raise DataError(f"{root}: unknown split {split!r}; the release has {', '.join(RELEASE_SPLITS)}")
    available = release_tasks(root, split)
    chosen = available if tasks is None else sorted(set(tasks))
    if not chosen:
        raise DataError(
            f"{root / 'sample' / SAMPLE_GROUP / split}: no sample files; the loading script builds a split's "
            "records from sample/instruction_tuning/<split>/<task>.json (extract the whole data.zip)"
        )
    missing = [task for task in chosen if task not in available]
    if missing:
        raise DataError(
            f"{root / 'sample' / SAMPLE_GROUP / split}: no sample file for {missing}; "
            f"this release has {split!r} samples for {available}"
        )
    for task in chosen:
        yield from read_task(root, split, task, selfies=selfies, limit=limit)


def sample_count(root: Path, split: str, task: str) -> int:
    """How many records `read_task` yields for (split, task): one per sample."""
    return len(_sample_record(root, split, task)[1])


def read_task(
    root: Path, split: str, task: str, *, selfies: bool = False, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """One task's records of `split`, in the sample file's order (see the module docstring)."""
    sample_file, samples, template_name = _sample_record(root, split, task)
    if limit is not None:
        samples = samples[:limit]
    templates = _templates(root / "template" / template_name / f"{task}.json", selfies)
    tags = _core_tags(root / "core_tag" / f"{task}.json", selfies)
    raw_split = "test" if split == "test_subset" else split
    raw_file = root / ("raw_selfies" if selfies else "raw") / raw_split / f"{task}.jsonl"
    last = max((s["idx"] for s in samples if isinstance(s, dict) and isinstance(s.get("idx"), int)), default=-1)
    lines = _raw_lines(raw_file, last)
    for number, sample in enumerate(samples):
        where = f"{sample_file}: samples[{number}]"
        if not isinstance(sample, dict) or not isinstance(sample.get("idx"), int) or sample["idx"] < 0:
            raise DataError(f"{where}: expected an object with a non-negative integer 'idx', got {sample!r}")
        idx = sample["idx"]
        if idx >= len(lines):
            raise DataError(f"{where}: idx {idx} is beyond {raw_file} ({len(lines)} lines)")
        item = _raw_item(lines[idx], raw_file, idx + 1, task, raw_split)
        template_id = sample.get("template_id")
        if not isinstance(template_id, int) or not 0 <= template_id < len(templates):
            raise DataError(f"{where}: template_id {template_id!r} is not one of the {len(templates)} templates")
        target, raw_output = _answer(item["output"], sample, where, f"{raw_file}:{idx + 1}")
        record = {
            "input": templates[template_id]["input"].replace("<INPUT>", _tagged(item["input"], tags["input"])),
            "output": templates[template_id]["output"].replace("<OUTPUT>", _tagged(raw_output, tags["output"])),
            "raw_input": item["input"],
            "raw_output": raw_output,
            "task": task,
            "split": split,
            "input_core_tag_left": tags["input"][0],
            "input_core_tag_right": tags["input"][1],
            "output_core_tag_left": tags["output"][0],
            "output_core_tag_right": tags["output"][1],
            "target": target,
            "sample_id": item.get("sample_id"),
        }
        yield {**{key: record[key] for key in RECORD_FIELDS}, "idx": idx}


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: missing; the loading script reads {what} from it (extract the whole data.zip)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable {what}: {e}") from e


def _sample_record(root: Path, split: str, task: str) -> tuple[Path, list[Any], str]:
    path = root / "sample" / SAMPLE_GROUP / split / f"{task}.json"
    record = _load_json(path, "the samples")
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("samples"), list)
        or not isinstance(record.get("template_name"), str)
    ):
        raise DataError(f"{path}: expected an object with 'template_name' (a string) and 'samples' (a list)")
    if record.get("task") != task or record.get("split") != split:
        raise DataError(
            f"{path}: says task {record.get('task')!r}, split {record.get('split')!r}; expected {task!r}, {split!r}"
        )
    return path, record["samples"], record["template_name"]


def _templates(path: Path, selfies: bool) -> list[dict[str, str]]:
    templates = _load_json(path, "the question templates")
    if not isinstance(templates, list) or not all(
        isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str) for t in templates
    ):
        raise DataError(f"{path}: expected a list of {{'input': '..<INPUT>..', 'output': '..<OUTPUT>..'}}")
    if selfies:
        return [{side: t[side].replace("SMILES", "SELFIES") for side in ("input", "output")} for t in templates]
    return templates


def _core_tags(path: Path, selfies: bool) -> dict[str, tuple[str | None, str | None]]:
    value = _load_json(path, "the core tags")
    tags: dict[str, tuple[str | None, str | None]] = {}
    for side in ("input", "output"):
        pair = value.get(side) if isinstance(value, dict) else None
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(t is None or isinstance(t, str) for t in pair)
            or (pair[0] is None) != (pair[1] is None)
        ):
            raise DataError(f"{path}: {side!r} must be [left, right], two strings or two nulls; got {pair!r}")
        left, right = pair
        if selfies and left == "<SMILES>":
            left, right = "<SELFIES>", "</SELFIES>"
        tags[side] = (left, right)
    return tags


def _raw_lines(path: Path, last: int) -> list[str]:
    """The file's lines up to index `last`, split as the script's `for line in file` splits them."""
    lines: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                lines.append(line)
                if len(lines) > last:
                    break
    except FileNotFoundError as e:
        raise DataError(f"{path}: missing; the samples point into it (extract the whole data.zip)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    return lines


def _raw_item(line: str, path: Path, number: int, task: str, split: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number}: not a JSON object ({e.msg})") from e
    if not isinstance(item, dict) or not isinstance(item.get("input"), str) or "output" not in item:
        raise DataError(f"{path}:{number}: expected an object with a string 'input' and an 'output'")
    if item.get("task") != task or item.get("split") != split:
        raise DataError(
            f"{path}:{number}: item of task {item.get('task')!r}, split {item.get('split')!r}; "
            f"expected {task!r}, {split!r}"
        )
    return item


def _answer(output: Any, sample: dict[str, Any], where: str, line: str) -> tuple[str | None, str]:
    """(target, answer): a string output is the answer; a dict output is narrowed to the sample's target."""
    if isinstance(output, str):
        return None, output
    if not isinstance(output, dict):
        raise DataError(f"{line}: 'output' must be a string or an object keyed by target, got {type(output).__name__}")
    target = sample.get("target")
    if not isinstance(target, str) or target not in output:
        raise DataError(f"{where}: target {target!r} is not a key of the output at {line} ({sorted(output)[:5]}...)")
    if not isinstance(output[target], str):
        raise DataError(f"{line}: output[{target!r}] must be a string, got {type(output[target]).__name__}")
    return target, output[target]


def _tagged(core: str, tags: tuple[str | None, str | None]) -> str:
    left, right = tags
    return core if left is None else f"{left} {core} {right}"
