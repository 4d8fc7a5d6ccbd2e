"""Build the flagship chemistry dataset from the molecules RDKit ships.

`build_dataset(out)` reads `RDConfig.RDDataDir/NCI/first_5K.smi` (or any
SMILES file), keeps the molecules RDKit parses and sanitises into one small
fragment, splits them train/dev/test *by molecule*, and writes one record per
molecule and task in our SMolInstruct layout (`out/<split>/<task>.jsonl`, see
`smolinstruct`). A molecule in test is in no other split of any task, so a model
cannot have seen a test molecule's SMILES under another task.

Same arguments, same RDKit: byte-identical files. About 4 s for the full 5k set.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhpc.chem.partition import FacilitySpec, Scheme, parse_facilities, partition_facilities, write_facility_dirs
from fedhpc.chem.smolinstruct import SPLITS, load_records, replacing_dir, write_split
from fedhpc.chem.tasks import ALL_TASKS, TASKS, make_record, stable_int
from fedhpc.errors import DataError

if TYPE_CHECKING:
    from rdkit.Chem import Mol

logger = logging.getLogger(__name__)

INFO_NAME = "dataset_info.json"
DATASET_DIR = "dataset"
FACILITIES_DIR = "facilities"
FORMAT = "fedhpc-smolinstruct/1"
#: Molecules above this many heavy atoms are skipped: long SMILES for a small model, 0.4 % of the NCI set.
MAX_HEAVY_ATOMS = 50


@dataclass(frozen=True)
class Molecule:
    key: str  # canonical aromatic SMILES: what "the same molecule" means for dedup and splits
    smiles: str  # canonical Kekulé SMILES, as SMolInstruct writes them; what records show
    mol: Mol


def default_source() -> Path:
    """RDKit's bundled NCI sample (4,999 SMILES), present wherever RDKit is installed."""
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"


def read_molecules(source: Path, max_molecules: int | None = None) -> tuple[list[Molecule], Counter[str]]:
    """Usable molecules of a SMILES file (first column), in file order, and counts of skip reasons.

    Skipped: unparsable or unsanitisable SMILES, more than one fragment (salts,
    mixtures: their formula and properties are ambiguous), radicals, more than
    `MAX_HEAVY_ATOMS` heavy atoms, and repeats of a molecule already kept.
    """
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:
        raise DataError("building the chemistry dataset needs RDKit: pip install 'fedhpc[chem]'") from e
    try:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{source}: cannot read the SMILES file: {e}") from e
    RDLogger.DisableLog("rdApp.*")  # NCI has a few broken SMILES; we count them instead of printing them
    try:
        molecules: list[Molecule] = []
        skipped: Counter[str] = Counter()
        seen: set[str] = set()
        for line in lines:
            if max_molecules is not None and len(molecules) >= max_molecules:
                break
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            molecule, reason = _prepare(Chem, fields[0], seen)
            if molecule is None:
                skipped[reason] += 1
            else:
                seen.add(molecule.key)
                molecules.append(molecule)
    finally:
        RDLogger.EnableLog("rdApp.*")
    return molecules, skipped


def _prepare(chem: Any, text: str, seen: set[str]) -> tuple[Molecule | None, str]:
    mol = chem.MolFromSmiles(text)
    if mol is None:
        return None, "invalid"
    if len(chem.GetMolFrags(mol)) > 1:
        return None, "multi_fragment"
    if any(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms()):
        return None, "radical"
    if mol.GetNumHeavyAtoms() > MAX_HEAVY_ATOMS:
        return None, "too_large"
    key = chem.MolToSmiles(mol)
    if key in seen:
        return None, "duplicate"
    kekule = chem.MolFromSmiles(key)  # from the canonical form: the Kekulé form depends on the molecule only
    chem.Kekulize(kekule)
    smiles = chem.MolToSmiles(kekule, kekuleSmiles=True)
    # Answers are computed on the molecule as the record writes it (re-sanitised, so aromatic again):
    # anyone can recompute them from `raw_input` to the last digit, float summation order included.
    return Molecule(key=key, smiles=smiles, mol=chem.MolFromSmiles(smiles)), ""


def assign_splits(keys: Sequence[str], seed: int, fractions: tuple[float, float, float]) -> dict[str, list[int]]:
    """Indices of `keys` per split: order by a seeded hash of the key, then cut at the fractions.

    Hash order is a shuffle that does not depend on file order; the cut makes the
    split sizes exact (train gets the rounding remainder).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise DataError(
            f"split_fractions must be three non-negative numbers summing to 1 with train > 0, got {fractions}"
        )
    order = sorted(range(len(keys)), key=lambda i: (stable_int(seed, "split", keys[i]), keys[i]))
    n_dev = round(fractions[1] * len(keys))
    n_test = round(fractions[2] * len(keys))
    n_train = len(keys) - n_dev - n_test
    return {"train": order[:n_train], "dev": order[n_train : n_train + n_dev], "test": order[n_train + n_dev :]}


def build_dataset(
    out: Path,
    *,
    tasks: Sequence[str] = ALL_TASKS,
    max_molecules: int | None = None,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    source: Path | None = None,
    balanced: bool = False,
) -> dict[str, Any]:
    """Write the dataset to `out` and return what `out/dataset_info.json` holds.

    `info["counts"][task][split]` is the number of records; `max_molecules=None`
    takes every usable molecule of `source` (default: `default_source()`).
    `balanced=True` keeps, in every split of every yes/no task, as many "Yes" as
    "No" records (see `balance_classes`).
    `out` is replaced whole if it holds an earlier build (its `dataset_info.json`),
    and refused if it is a non-empty folder of something else.
    """
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise DataError(f"unknown or no tasks {unknown}; choose from {list(ALL_TASKS)}")
    if max_molecules is not None and max_molecules < 1:
        raise DataError(f"max_molecules must be positive or None, got {max_molecules}")
    source = Path(source) if source is not None else default_source()
    molecules, skipped = read_molecules(source, max_molecules)
    if not molecules:
        raise DataError(f"{source}: no usable molecule (skipped: {dict(skipped)})")
    splits = assign_splits([m.key for m in molecules], seed, split_fractions)
    info: dict[str, Any] = {
        "format": FORMAT,
        "source": source.name,
        "rdkit": _rdkit_version(),
        "seed": seed,
        "split_fractions": list(split_fractions),
        "molecules": {"kept": len(molecules), "skipped": dict(sorted(skipped.items()))},
        "molecules_per_split": {split: len(idx) for split, idx in splits.items()},
        "tasks": {task: TASKS[task].kind for task in tasks},
        "balanced": balanced,
        "counts": {task: {} for task in tasks},
    }
    with replacing_dir(Path(out), INFO_NAME) as tmp:
        for split in SPLITS:
            records = [
                make_record(TASKS[task], molecules[i].mol, molecules[i].smiles, split, seed=seed, index=n)
                for task in tasks
                for n, i in enumerate(splits[split])
            ]
            if balanced:
                records = balance_classes(records)
            for task, count in write_split(tmp, split, records).items():
                info["counts"][task][split] = count
            for task, share in _yes_share(records).items():
                info.setdefault("yes_share", {}).setdefault(task, {})[split] = share
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("built %s: %d molecules, %s", out, len(molecules), info["counts"])
    return info


def balance_classes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop the majority answer's surplus in each yes/no task: as many "Yes" as "No" records remain.

    Why: a test split that is 80 % "No" scores 0.8 for a model that never reads
    the molecule, and a training split like it teaches exactly that. Records are
    in the split's seeded hash order, so the first ones of each class are a random
    sample of it; other tasks' records are kept as they are.
    """
    kept_per_answer: dict[tuple[str, str], int] = {}
    limit: dict[str, int] = {}
    for task in {r["task"] for r in records if TASKS[r["task"]].kind == "classification"}:
        answers = [r["raw_output"] for r in records if r["task"] == task]
        limit[task] = min(answers.count("Yes"), answers.count("No"))
    balanced = []
    for record in records:
        task = record["task"]
        if task in limit:
            key = (task, record["raw_output"])
            kept_per_answer[key] = kept_per_answer.get(key, 0) + 1
            if kept_per_answer[key] > limit[task]:
                continue
        balanced.append(record)
    return balanced


def _yes_share(records: list[dict[str, Any]]) -> dict[str, float]:
    """Share of "Yes" per classification task: the accuracy of always answering the majority."""
    shares: dict[str, float] = {}
    for task in sorted({r["task"] for r in records if TASKS[r["task"]].kind == "classification"}):
        answers = [r["raw_output"] for r in records if r["task"] == task]
        shares[task] = round(answers.count("Yes") / len(answers), 4)
    return shares


def _rdkit_version() -> str:
    import rdkit

    return rdkit.__version__


def build_federated(
    out: Path,
    facilities: str | FacilitySpec = "3",
    *,
    scheme: Scheme | None = None,
    alpha: float = 0.5,
    seed: int = 0,
    max_molecules: int | None = None,
    tasks: Sequence[str] | None = None,
    balanced: bool = False,
) -> dict[str, Any]:
    """What `fedhpc data chem` does: build the dataset, then split its train records across facilities.

    Writes `out/dataset/<split>/<task>.jsonl` (all splits: evaluate on `dev` or
    `test`) and `out/facilities/<name>/train/<task>.jsonl` (each facility's `data:`).
    Side by side, not nested, so that a reader that walks a folder recursively
    never sees a record twice. `facilities` is a `parse_facilities` spec or a
    `FacilitySpec`. `tasks=None` builds the tasks the spec names, or every task
    when it names none. Returns `{"dataset": <dataset info>, "facilities": {name: {task:
    count}}, "scheme": ..., "seed": ...}` (and `"alpha"` for dirichlet).
    """
    spec = parse_facilities(facilities, tasks or ALL_TASKS) if isinstance(facilities, str) else facilities
    if tasks is None:
        named = {task for facility_tasks in spec.tasks or () for task in facility_tasks}
        tasks = tuple(task for task in ALL_TASKS if task in named) or ALL_TASKS
    chosen: Scheme = scheme or ("by_task" if spec.tasks else "iid")
    meta = {"scheme": chosen, "seed": seed, **({"alpha": alpha} if chosen == "dirichlet" else {})}
    # Both halves are built in one folder that replaces `out` only when the partition succeeded too:
    # a spec the records cannot meet leaves the earlier build (or nothing), not a dataset without facilities.
    with replacing_dir(Path(out), f"{DATASET_DIR}/{INFO_NAME}") as tmp:
        info = build_dataset(tmp / DATASET_DIR, tasks=tasks, max_molecules=max_molecules, seed=seed, balanced=balanced)
        parts = partition_facilities(load_records(tmp / DATASET_DIR, "train"), spec, chosen, alpha=alpha, seed=seed)
        counts = write_facility_dirs(parts, tmp / FACILITIES_DIR, info=meta)
    return {"dataset": info, "facilities": counts, **meta}
