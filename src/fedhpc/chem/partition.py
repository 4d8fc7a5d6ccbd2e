"""Split training records across facilities: `iid`, `by_task` or `dirichlet`.

- `iid`: a seeded shuffle cut into the facilities' sizes; every facility sees every task.
- `by_task`: facility i holds only the tasks `task_map[i]` (strongly non-IID: the
  federated model must combine skills no single facility has). A task given to
  several facilities is divided among them.
- `dirichlet`: for each task, the shares across facilities are drawn from
  Dirichlet(alpha) (Hsu et al. 2019, arXiv:1909.06335, with tasks in the role of
  labels): small alpha, each task sits mostly at one facility; large alpha, near IID.

`sizes` fixes how many records each facility holds: counts (`[1200, 600, 300]`) or
shares of all records (`[0.5, 0.3, 0.2]`; a sum below 1 leaves the rest unused).
Without sizes, `iid` splits evenly, `by_task` gives each facility all of its
tasks' records, and `dirichlet` lets the draw decide. With sizes, `dirichlet`
keeps the drawn task mixture but scales it to the sizes by iterative proportional
fitting; `by_task` samples each facility's size from its own tasks, and there a
count may be None (`[360, None]`): that facility keeps every record of its tasks.

Everything is a function of (records in order, arguments, seed): same inputs, same split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedhpc.chem.smolinstruct import replacing_dir, write_split
from fedhpc.chem.tasks import ALL_TASKS
from fedhpc.errors import DataError

Scheme = Literal["iid", "by_task", "dirichlet"]
SCHEMES: tuple[str, ...] = ("iid", "by_task", "dirichlet")
PARTITION_INFO = "partition_info.json"
Record = dict[str, Any]


def partition(
    records: Sequence[Record],
    scheme: Scheme = "iid",
    *,
    n_facilities: int | None = None,
    sizes: Sequence[int] | Sequence[float] | None = None,
    task_map: Sequence[Sequence[str]] | None = None,
    alpha: float = 0.5,
    seed: int = 0,
) -> list[list[Record]]:
    """Records per facility (the same dict objects, shuffled within each facility).

    The number of facilities comes from `n_facilities`, `sizes` or `task_map`
    (whichever are given must agree). `task_map=None` with `by_task` deals the
    tasks out in sorted order, round robin. Raises `DataError` on an impossible request.
    """
    parts = partition_indices(
        [str(record["task"]) for record in records],
        scheme,
        n_facilities=n_facilities,
        sizes=sizes,
        task_map=task_map,
        alpha=alpha,
        seed=seed,
    )
    return [[records[i] for i in part] for part in parts]


def partition_indices(
    tasks: Sequence[str],
    scheme: Scheme = "iid",
    *,
    n_facilities: int | None = None,
    sizes: Sequence[int | None] | Sequence[float] | None = None,
    task_map: Sequence[Sequence[str]] | None = None,
    alpha: float = 0.5,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[list[int]]:
    """`partition` on the records' task names alone: positions in `tasks` per facility.

    Needs one string per record, not the records, so that a release of millions
    of records can be split before any of them is assembled. `names` only name
    the facilities in errors (default: their positions).
    """
    if scheme not in SCHEMES:
        raise DataError(f"unknown partition scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if not tasks:
        raise DataError("no records to partition")
    n = _facility_count(n_facilities, sizes, task_map)
    if sizes is not None and None in sizes and scheme != "by_task":
        raise DataError(
            f"a facility without a count keeps all records of its tasks, which only by_task does (not {scheme})"
        )
    rng = np.random.default_rng(seed)
    targets = _targets(sizes, len(tasks), n)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    if scheme == "iid":
        order = rng.permutation(len(tasks))
        counts = targets if targets is not None else _apportion(np.ones(n), len(tasks))
        bounds = np.concatenate(([0], np.cumsum(counts)))
        parts = [order[bounds[i] : bounds[i + 1]].tolist() for i in range(n)]
    elif scheme == "by_task":
        labels = list(names) if names is not None else [str(i) for i in range(n)]
        parts = _by_task(by_task, task_map or _deal_tasks(sorted(by_task), n), targets, rng, labels)
    else:
        if not alpha > 0:
            raise DataError(f"dirichlet alpha must be positive, got {alpha}")
        parts = _dirichlet(by_task, n, alpha, targets, rng)
    return [rng.permutation(part).tolist() for part in parts]


def _facility_count(n: int | None, sizes: Sequence[Any] | None, task_map: Sequence[Any] | None) -> int:
    given = {len(x) for x in (sizes, task_map) if x is not None} | ({n} if n is not None else set())
    if len(given) != 1:
        raise DataError(
            f"facility count unclear: n_facilities={n}, {len(sizes or [])} sizes, {len(task_map or [])} task lists; "
            "give one of them, or make them agree"
        )
    count = given.pop()
    if count < 1:
        raise DataError("need at least one facility")
    return count


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to `weights` summing to `total` (largest remainder, ties to the lower index)."""
    weights = np.asarray(weights, dtype=float)
    exact = weights / weights.sum() * total if weights.sum() > 0 else np.zeros_like(weights)
    counts = np.floor(exact).astype(int)
    remainder = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return counts


def _targets(sizes: Sequence[Any] | None, n_records: int, n: int) -> np.ndarray | None:
    """Integer record counts per facility from counts or shares; None when sizes are not given.

    A size of None (by_task only) becomes -1: that facility keeps all its tasks' records.
    """
    if sizes is None:
        return None
    given = [s for s in sizes if s is not None]
    if all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in given):
        counts = np.array([-1 if s is None else s for s in sizes], dtype=int)
        if counts[counts >= 0].sum() > n_records:
            raise DataError(f"sizes ask for {counts[counts >= 0].sum()} records but there are {n_records}")
    elif len(given) < len(sizes):
        raise DataError(f"sizes {list(sizes)}: beside a facility without a count, give counts, not shares")
    else:
        shares = np.array(sizes, dtype=float)
        if shares.sum() > 1 + 1e-9 or (shares > 1).any():
            raise DataError(f"size shares must sum to at most 1, got {list(sizes)}; give counts as integers")
        counts = _apportion(shares, min(n_records, round(float(shares.sum()) * n_records)))
    if (counts == 0).any() or (counts < -1).any():
        raise DataError(f"every facility needs at least one record; sizes {list(sizes)} give {counts.tolist()}")
    return counts


def _deal_tasks(tasks: list[str], n: int) -> list[list[str]]:
    if len(tasks) < n:
        raise DataError(f"by_task over {n} facilities needs at least {n} tasks; the records hold {tasks}")
    return [tasks[i::n] for i in range(n)]


def _by_task(
    by_task: dict[str, list[int]],
    task_map: Sequence[Sequence[str]],
    targets: np.ndarray | None,
    rng: np.random.Generator,
    labels: Sequence[str],
) -> list[list[int]]:
    missing = sorted({t for tasks in task_map for t in tasks} - set(by_task))
    if missing:
        raise DataError(f"task_map names tasks with no records: {missing}; the records hold {sorted(by_task)}")
    if any(not tasks for tasks in task_map):
        raise DataError("by_task: every facility needs at least one task")
    pools: list[list[int]] = [[] for _ in task_map]
    for task in sorted(by_task):
        holders = [i for i, tasks in enumerate(task_map) if task in tasks]
        if not holders:
            continue  # a task no facility holds stays out of training (e.g. to test transfer)
        counted = targets is not None and bool((targets[holders] >= 0).all())
        weights = targets[holders].astype(float) if counted else np.ones(len(holders))
        shuffled = rng.permutation(by_task[task])
        bounds = np.concatenate(([0], np.cumsum(_apportion(weights, len(shuffled)))))
        for k, i in enumerate(holders):
            pools[i].extend(shuffled[bounds[k] : bounds[k + 1]].tolist())
    if targets is None:
        return pools
    for i, pool in enumerate(pools):
        if len(pool) < targets[i]:
            raise DataError(
                f"facility {labels[i]} should hold {targets[i]} records but its tasks {list(task_map[i])} give it "
                f"{len(pool)}"
            )
    return [pool if targets[i] < 0 else rng.permutation(pool)[: targets[i]].tolist() for i, pool in enumerate(pools)]


def _dirichlet(
    by_task: dict[str, list[int]], n: int, alpha: float, targets: np.ndarray | None, rng: np.random.Generator
) -> list[list[int]]:
    tasks = sorted(by_task)
    task_sizes = np.array([len(by_task[t]) for t in tasks])
    shares = rng.dirichlet(np.full(n, alpha), size=len(tasks)).T  # (facility, task); columns sum to 1
    if targets is None:
        counts = np.stack([_apportion(shares[:, j], task_sizes[j]) for j in range(len(tasks))], axis=1)
    else:
        counts = _fit_counts(shares * task_sizes, targets, _apportion(task_sizes, int(targets.sum())))
    parts: list[list[int]] = [[] for _ in range(n)]
    for j, task in enumerate(tasks):
        shuffled = rng.permutation(by_task[task])
        bounds = np.concatenate(([0], np.cumsum(counts[:, j])))
        for i in range(n):
            parts[i].extend(shuffled[bounds[i] : bounds[i + 1]].tolist())
    return parts


def _fit_counts(expected: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Integer matrix with row sums `rows` and column sums `cols`, shaped like `expected`.

    Iterative proportional fitting keeps the odds ratios of `expected` (the drawn
    task mixture); rounding then fills the floors' deficits, largest fractions first.
    """
    fitted = np.where(cols > 0, np.maximum(expected, 1e-12), 0.0)
    for _ in range(10_000):
        fitted *= (rows / fitted.sum(axis=1))[:, None]
        col_sums = fitted.sum(axis=0)
        fitted *= np.divide(cols, col_sums, out=np.zeros_like(col_sums), where=col_sums > 0)[None, :]
        if np.abs(fitted.sum(axis=1) - rows).max() < 1e-6:
            break
    counts = np.floor(fitted + 1e-9).astype(int)
    row_need, col_need = rows - counts.sum(axis=1), cols - counts.sum(axis=0)
    for flat in np.argsort(-(fitted - counts), axis=None, kind="stable"):
        i, j = divmod(int(flat), fitted.shape[1])
        if row_need[i] > 0 and col_need[j] > 0:
            counts[i, j] += 1
            row_need[i] -= 1
            col_need[j] -= 1
    for i in range(len(rows)):  # whatever is left: any cell with both needs open is fine
        for j in range(len(cols)):
            move = min(row_need[i], col_need[j])
            if move > 0:
                counts[i, j] += move
                row_need[i] -= move
                col_need[j] -= move
    return counts


# --- named facilities, for the CLI ----------------------------------------------------------------


@dataclass(frozen=True)
class FacilitySpec:
    """Facility names and, optionally, their sizes and tasks (one entry per facility)."""

    names: tuple[str, ...]
    sizes: tuple[int | None, ...] | tuple[float, ...] | None = None  # None entry: all of its tasks' records
    tasks: tuple[tuple[str, ...], ...] | None = None


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the same rule as facility names in experiment files


def parse_facilities(spec: str, known_tasks: Sequence[str] = ALL_TASKS) -> FacilitySpec:
    """Parse `--facilities`: `3`, or comma-separated `name[=size][:task+task...]`.

    Examples: `3` (facility-1..3), `alcf,olcf,nersc`, `alcf=0.5,olcf=0.3,nersc=0.2`,
    `alcf=1200,olcf=600`, `alcf:s2f,olcf:logp+tpsa,nersc:lipinski`. A task may be
    named in full or by its unique suffix (`s2f`, `logp`). Tasks are all-or-none
    across facilities; so are sizes, except that with tasks a count may be left out
    (`alcf=360:s2f,olcf:esol`): that facility keeps every record of its tasks.
    """
    spec = spec.strip()
    if spec.isdigit():
        if int(spec) < 1:
            raise DataError("--facilities: need at least one facility")
        return FacilitySpec(names=tuple(f"facility-{i + 1}" for i in range(int(spec))))
    names, sizes, tasks = [], [], []
    for item in (part.strip() for part in spec.split(",")):
        head, _, task_text = item.partition(":")
        name, _, size_text = head.partition("=")
        if not _NAME.match(name):
            raise DataError(f"--facilities: bad facility name {name!r} in {spec!r} (letters, digits, _ . -)")
        names.append(name)
        sizes.append(_parse_size(size_text, spec) if size_text else None)
        tasks.append(tuple(_resolve_task(t, known_tasks) for t in task_text.split("+")) if task_text else None)
    if len(set(names)) != len(names):
        raise DataError(f"--facilities: a facility name appears twice in {spec!r}")
    partial_counts = tasks[0] is not None and all(s is None or isinstance(s, int) for s in sizes)
    for what, values in (("sizes", sizes), ("tasks", tasks)):
        if any(v is None for v in values) and any(v is not None for v in values) and not (
            what == "sizes" and partial_counts
        ):
            raise DataError(f"--facilities: give {what} for every facility or for none, in {spec!r}")
    if len({type(s) for s in sizes if s is not None}) > 1:
        raise DataError(f"--facilities: sizes must be all shares (0.5) or all counts (1200), in {spec!r}")
    return FacilitySpec(
        names=tuple(names),
        sizes=tuple(sizes) if any(s is not None for s in sizes) else None,  # type: ignore[arg-type]
        tasks=tuple(tasks) if tasks[0] is not None else None,  # type: ignore[arg-type]
    )


def _parse_size(text: str, spec: str) -> int | float:
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError as e:
        raise DataError(f"--facilities: size {text!r} is neither a count nor a share, in {spec!r}") from e


def _resolve_task(name: str, known: Sequence[str]) -> str:
    if name in known:
        return name
    matches = [task for task in known if re.split(r"[-_]", task)[-1].lower() == name.lower()]
    if len(matches) != 1:
        raise DataError(f"--facilities: unknown task {name!r}; use one of {list(known)} or their suffixes")
    return matches[0]


def partition_facilities(
    records: Sequence[Record], spec: FacilitySpec, scheme: Scheme | None = None, *, alpha: float = 0.5, seed: int = 0
) -> dict[str, list[Record]]:
    """`partition` by name. `scheme=None`: `by_task` when the spec gives tasks, else `iid`."""
    parts = partition_facility_indices([str(r["task"]) for r in records], spec, scheme, alpha=alpha, seed=seed)
    return {name: [records[i] for i in part] for name, part in parts.items()}


def partition_facility_indices(
    tasks: Sequence[str], spec: FacilitySpec, scheme: Scheme | None = None, *, alpha: float = 0.5, seed: int = 0
) -> dict[str, list[int]]:
    """`partition_indices` by name: positions in `tasks` (one task name per record) per facility."""
    chosen = scheme or ("by_task" if spec.tasks else "iid")
    if spec.tasks and chosen != "by_task":
        raise DataError(f"--facilities gives tasks per facility, which only the by_task scheme uses (not {chosen})")
    try:
        parts = partition_indices(
            tasks, chosen, n_facilities=len(spec.names), sizes=spec.sizes, task_map=spec.tasks, alpha=alpha,
            seed=seed, names=spec.names,
        )
    except DataError as e:  # the sizes or tasks the user gave in --facilities cannot be met
        raise DataError(f"--facilities: {e}") from e
    return dict(zip(spec.names, parts, strict=True))


def write_facility_dirs(
    parts: Mapping[str, Sequence[Record]], out: Path, *, info: Mapping[str, Any] | None = None
) -> dict[str, dict[str, int]]:
    """Write `out/<facility>/train/<task>.jsonl` for each facility; returns record counts per facility and task.

    Each facility folder is what its experiment entry's `data:` points at.
    `out/partition_info.json` records `info` (scheme, seed, ...) and the counts.
    `out` is replaced whole (see `smolinstruct.replacing_dir`).
    """
    for name, records in parts.items():
        wrong = {str(r.get("split")) for r in records} - {"train"}
        if wrong:
            raise DataError(f"facility {name}: only train records go to facilities, got splits {sorted(wrong)}")
    counts: dict[str, dict[str, int]] = {}
    with replacing_dir(Path(out), PARTITION_INFO) as tmp:
        for name, records in parts.items():
            counts[name] = write_split(tmp / name, "train", records)
        summary = {**(info or {}), "facilities": counts}
        (tmp / PARTITION_INFO).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return counts
