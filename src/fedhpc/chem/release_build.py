"""`fedhpc data smolinstruct`: the real SMolInstruct release split across facilities, in the layout the worker reads.

From an extracted release (see `release`) it writes

    OUT/dataset/<split>/<task>.jsonl          every record of the chosen tasks; splits train, dev, test, test_subset
    OUT/dataset/dataset_info.json             the release, the options, and record counts per task and split
    OUT/facilities/<name>/train/<task>.jsonl  each facility's share of train: what its `data:` points at
    OUT/facilities/partition_info.json        scheme, seed and counts per facility and task

Records are the loading script's (`release.read_task`) in our layout, so
`load_records(OUT/dataset, split)` gives them back with `idx` = position in the
task file. The chosen tasks are those the facilities name, or every task with
train samples when none are named.

The split across facilities is decided on task names alone
(`partition_facility_indices`) before any record is assembled; records are then
streamed task by task, so the whole release (over three million train records)
never sits in memory at once. Arguments are checked before anything is written,
and OUT is replaced whole when everything is written, so a failure leaves the
previous OUT (or none) and never half a dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedhpc.chem.partition import (
    PARTITION_INFO,
    SCHEMES,
    Scheme,
    parse_facilities,
    partition_facility_indices,
)
from fedhpc.chem.release import read_task, release_root, release_tasks, sample_count
from fedhpc.chem.smolinstruct import record_line, replacing_dir
from fedhpc.errors import DataError

logger = logging.getLogger(__name__)

DATASET_DIR = "dataset"
FACILITIES_DIR = "facilities"
INFO_NAME = "dataset_info.json"
FORMAT = "fedhpc-smolinstruct-release/1"
EVAL_SPLITS = ("dev", "test", "test_subset")
DEFAULT_ALPHA = 0.5


def parse_partition(text: str | None) -> tuple[Scheme | None, float]:
    """`--partition`: `by_task`, `iid`, `dirichlet` or `dirichlet:ALPHA`; None lets the spec decide."""
    if text is None:
        return None, DEFAULT_ALPHA
    scheme, _, alpha_text = text.partition(":")
    if scheme not in SCHEMES or (alpha_text and scheme != "dirichlet"):
        raise DataError(f"--partition {text!r}: use by_task, iid or dirichlet:ALPHA (e.g. dirichlet:0.5)")
    if not alpha_text:
        return scheme, DEFAULT_ALPHA  # type: ignore[return-value]
    try:
        alpha = float(alpha_text)
    except ValueError:
        alpha = 0.0
    if not alpha > 0:
        raise DataError(f"--partition {text!r}: ALPHA must be a positive number (smaller: more skewed)")
    return "dirichlet", alpha


def build_from_release(
    release: Path | str,
    out: Path | str,
    facilities: str,
    *,
    partition: str | None = None,
    seed: int = 0,
    selfies: bool = False,
) -> dict[str, Any]:
    """Write OUT (see the module docstring) and return what its two info files hold together.

    `{"release", "selfies", "scheme", "seed", ["alpha"], "tasks", "dataset": {task: {split: n}},
    "facilities": {name: {task: n}}}`.
    """
    root = _checked_root(Path(release), selfies)
    available = release_tasks(root, "train")
    if not available:
        raise DataError(f"{root}: no train sample files under sample/instruction_tuning/train")
    spec = parse_facilities(facilities, available)
    scheme, alpha = parse_partition(partition)
    tasks = sorted({t for named in spec.tasks for t in named}) if spec.tasks else available
    counts = {task: sample_count(root, "train", task) for task in tasks}
    names = [task for task in tasks for _ in range(counts[task])]
    parts = partition_facility_indices(names, spec, scheme, alpha=alpha, seed=seed)
    owner = np.full(len(names), -1, dtype=np.int32)
    for number, part in enumerate(parts.values()):
        owner[part] = number
    chosen = scheme or ("by_task" if spec.tasks else "iid")
    meta: dict[str, Any] = {"scheme": chosen, "seed": seed, **({"alpha": alpha} if chosen == "dirichlet" else {})}
    info: dict[str, Any] = {
        "format": FORMAT,
        "release": str(root.resolve()),
        "selfies": selfies,
        **meta,
        "tasks": tasks,
        "dataset": {task: {} for task in tasks},
    }
    with replacing_dir(Path(out), f"{DATASET_DIR}/{INFO_NAME}") as tmp:
        facility_counts = _write_train(root, tmp, tasks, counts, owner, list(parts), selfies)
        for split in EVAL_SPLITS:
            offered = set(release_tasks(root, split))
            for task in tasks:
                if task in offered:
                    path = tmp / DATASET_DIR / split / f"{task}.jsonl"
                    info["dataset"][task][split] = _write_records(path, read_task(root, split, task, selfies=selfies))
                else:
                    logger.warning("%s: no %s samples for %s; its %s split is left out", root, split, task, split)
        for task in tasks:
            info["dataset"][task]["train"] = counts[task]
        _write_json(tmp / DATASET_DIR / INFO_NAME, info)
        _write_json(tmp / FACILITIES_DIR / PARTITION_INFO, {**meta, "facilities": facility_counts})
    logger.info("built %s from %s: %s", out, root, facility_counts)
    return {**info, "facilities": facility_counts}


def _checked_root(release: Path, selfies: bool) -> Path:
    if not release.exists():
        raise DataError(
            f"--release {release}: no such directory; download data.zip of osunlp/SMolInstruct and unzip it"
        )
    root = release_root(release)
    if root is None:
        raise DataError(
            f"--release {release}: not an extracted SMolInstruct release; expected raw/, core_tag/, template/ and "
            "sample/ in it or in its data/ folder (unzip data.zip)"
        )
    raw = "raw_selfies" if selfies else "raw"
    if not (root / raw).is_dir():
        raise DataError(f"--release {root}: no {raw}/ folder" + (" (--selfies reads raw_selfies/)" if selfies else ""))
    return root


def _write_train(
    root: Path,
    tmp: Path,
    tasks: Sequence[str],
    counts: dict[str, int],
    owner: np.ndarray,
    facilities: list[str],
    selfies: bool,
) -> dict[str, dict[str, int]]:
    """Stream each task's train records into dataset/train and the owning facility's folder; counts per facility."""
    facility_counts: dict[str, dict[str, int]] = {name: {} for name in facilities}
    folders = [tmp / FACILITIES_DIR / name / "train" for name in facilities]
    for folder in folders:
        folder.mkdir(parents=True)
    offset = 0
    for task in tasks:
        owners = owner[offset : offset + counts[task]]
        offset += counts[task]
        with ExitStack() as stack:
            handles: dict[int, IO[str]] = {}
            everything = _open(stack, tmp / DATASET_DIR / "train" / f"{task}.jsonl")
            for position, record in enumerate(read_task(root, "train", task, selfies=selfies)):
                line = record_line(record)
                everything.write(line)
                number = int(owners[position])
                if number >= 0:
                    if number not in handles:
                        handles[number] = _open(stack, folders[number] / f"{task}.jsonl")
                    handles[number].write(line)
        for number, name in enumerate(facilities):
            held = int((owners == number).sum())
            if held:
                facility_counts[name][task] = held
    return facility_counts


def _open(stack: ExitStack, path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return stack.enter_context(open(path, "w", encoding="utf-8"))


def _write_records(path: Path, records: Any) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record_line(record))
            written += 1
    return written


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A plain table, a row per task: records at each facility, then in each split of the dataset."""
    facilities = list(result["facilities"])
    splits = ["train", *EVAL_SPLITS]
    header = ["task", *facilities, *(f"dataset/{split}" for split in splits)]
    rows = []
    for task in result["tasks"]:
        held = [result["facilities"][name].get(task, 0) for name in facilities]
        rows.append([task, *held, *(result["dataset"][task].get(split) for split in splits)])
    totals = ["total", *(sum(row[i] or 0 for row in rows) for i in range(1, len(header)))]
    table = [header, *[[str(cell) if cell is not None else "-" for cell in row] for row in [*rows, totals]]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["  ".join(_aligned(i, cell, w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in table]


def _aligned(column: int, cell: str, width: int) -> str:
    return cell.ljust(width) if column == 0 else cell.rjust(width)
