"""The chemistry dataset builder: determinism, molecule-level splits, and answers RDKit agrees with."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("rdkit")

from rdkit import Chem  # noqa: E402
from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors  # noqa: E402

from fedhpc.chem.build import build_dataset, build_federated  # noqa: E402
from fedhpc.chem.metrics import extract_core, score_task  # noqa: E402
from fedhpc.chem.smolinstruct import load_records  # noqa: E402
from fedhpc.chem.tasks import ALL_TASKS, RECORD_FIELDS, TASKS  # noqa: E402
from fedhpc.errors import DataError  # noqa: E402

N_MOLECULES = 300


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("chem") / "ds"
    return out, build_dataset(out, max_molecules=N_MOLECULES, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _all_records(root: Path) -> list[dict]:
    return [r for split in ("train", "dev", "test") for r in load_records(root, split)]


def _key(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


def test_layout_and_counts(built: tuple[Path, dict]) -> None:
    out, info = built
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "dev", "test", "train"]
    assert json.loads((out / "dataset_info.json").read_text()) == info
    assert info["molecules"]["kept"] == N_MOLECULES
    assert sum(info["molecules_per_split"].values()) == N_MOLECULES
    assert info["molecules_per_split"] == {"train": 240, "dev": 30, "test": 30}
    for task in ALL_TASKS:
        assert info["counts"][task] == info["molecules_per_split"]
        for split in ("train", "dev", "test"):
            lines = (out / split / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
            assert len(lines) == info["counts"][task][split]
            assert list(json.loads(lines[0])) == list(RECORD_FIELDS)


def test_same_arguments_give_identical_bytes(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    again = build_dataset(tmp_path / "again", max_molecules=N_MOLECULES, seed=0)
    assert _files(tmp_path / "again") == _files(out)
    assert again == json.loads((out / "dataset_info.json").read_text())


def test_other_seed_gives_other_split(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    build_dataset(tmp_path / "seed1", max_molecules=N_MOLECULES, seed=1)
    test0 = {r["raw_input"] for r in load_records(out, "test")}
    test1 = {r["raw_input"] for r in load_records(tmp_path / "seed1", "test")}
    assert len(test0) == len(test1) == 30
    assert test0 != test1


def test_splits_are_disjoint_by_molecule_across_all_tasks(built: tuple[Path, dict]) -> None:
    out, _ = built
    molecules: dict[str, set[str]] = {}
    for split in ("train", "dev", "test"):
        by_task = {task: {_key(r["raw_input"]) for r in load_records(out, split, [task])} for task in ALL_TASKS}
        molecules[split] = set().union(*by_task.values())
        assert all(found == molecules[split] for found in by_task.values()), "each task covers the split's molecules"
    assert not molecules["train"] & molecules["test"]
    assert not molecules["dev"] & molecules["test"]
    assert not molecules["train"] & molecules["dev"]


def _recompute(task: str, mol: Chem.Mol) -> str:
    """The answers as their docstrings define them, written out again independently of `tasks`."""
    if task == "name_conversion-s2f":
        return rdMolDescriptors.CalcMolFormula(mol)
    if task == "property_prediction-logp":
        return f"{Crippen.MolLogP(mol):.2f}".replace("-0.00", "0.00")
    if task == "property_prediction-tpsa":
        return f"{rdMolDescriptors.CalcTPSA(mol):.2f}"
    if task == "property_prediction-halogen":
        return "Yes" if any(atom.GetAtomicNum() in (9, 17, 35, 53) for atom in mol.GetAtoms()) else "No"
    if task == "property_prediction-aromatic":
        return "Yes" if rdMolDescriptors.CalcNumAromaticRings(mol) > 0 else "No"
    if task == "property_prediction-carbonyl":
        carbonyls = [
            bond for bond in mol.GetBonds()
            if bond.GetBondType() == Chem.BondType.DOUBLE
            and sorted((bond.GetBeginAtom().GetSymbol(), bond.GetEndAtom().GetSymbol())) == ["C", "O"]
            and all(atom.GetTotalDegree() == (3 if atom.GetSymbol() == "C" else 1)
                    for atom in (bond.GetBeginAtom(), bond.GetEndAtom()))
        ]
        return "Yes" if carbonyls else "No"
    if task == "property_prediction-oxygens":
        found = re.search(r"O(\d*)(?![a-z])", rdMolDescriptors.CalcMolFormula(mol))
        return "0" if found is None else found.group(1) or "1"
    if task == "property_prediction-cyclic":
        return "Yes" if re.search(r"\d", re.sub(r"\[[^\]]*\]", "", Chem.MolToSmiles(mol))) else "No"
    if task == "property_prediction-aromaticrings":
        return str(sum(all(mol.GetBondWithIdx(b).GetIsAromatic() for b in ring) for ring in mol.GetRingInfo().BondRings()))
    if task == "property_prediction-ringcount":
        return str(mol.GetRingInfo().NumRings())
    if task == "property_prediction-heavyatoms":
        return str(sum(atom.GetAtomicNum() > 1 for atom in mol.GetAtoms()))
    assert task == "property_prediction-lipinski"
    ok = (
        Descriptors.MolWt(mol) <= 500
        and Crippen.MolLogP(mol) <= 5
        and rdMolDescriptors.CalcNumLipinskiHBD(mol) <= 5
        and rdMolDescriptors.CalcNumLipinskiHBA(mol) <= 10
    )
    return "Yes" if ok else "No"


def test_every_answer_matches_rdkit_on_the_records_smiles(built: tuple[Path, dict]) -> None:
    out, _ = built
    records = _all_records(out)
    assert len(records) == N_MOLECULES * len(ALL_TASKS)
    for record in records:
        mol = Chem.MolFromSmiles(record["raw_input"])
        assert mol is not None and len(Chem.GetMolFrags(mol)) == 1
        assert record["raw_output"] == _recompute(record["task"], mol), record


def test_inputs_hold_canonical_kekule_smiles(built: tuple[Path, dict]) -> None:
    out, _ = built
    for record in load_records(out, "train", ["name_conversion-s2f"]):
        smiles = record["raw_input"]
        outside_brackets = re.sub(r"\[[^\]]*\]|Cl|Br", "", smiles)
        assert not re.search(r"[a-z]", outside_brackets), f"aromatic atoms left in {smiles}"
        mol = Chem.MolFromSmiles(_key(smiles))
        Chem.Kekulize(mol)
        assert Chem.MolToSmiles(mol, kekuleSmiles=True) == smiles


def test_tags_present_and_extraction_round_trips(built: tuple[Path, dict]) -> None:
    out, _ = built
    records = _all_records(out)
    templates_seen: dict[str, set[str]] = {}
    for record in records:
        spec = TASKS[record["task"]]
        assert (record["input_core_tag_left"], record["input_core_tag_right"]) == ("<SMILES>", "</SMILES>")
        assert (record["output_core_tag_left"], record["output_core_tag_right"]) == spec.output_tags
        assert f"<SMILES> {record['raw_input']} </SMILES>" in record["input"]
        left, right = spec.output_tags
        assert f"{left} {record['raw_output']} {right}" in record["output"]
        assert extract_core(record["output"], left, right) == record["raw_output"]
        templates_seen.setdefault(record["task"], set()).add(record["input"].replace(record["raw_input"], "X"))
    assert all(len(seen) > 1 for seen in templates_seen.values()), "several templates per task"
    scores = {
        task: score_task(
            task,
            [[r["output"]] for r in records if r["task"] == task],
            [[r["raw_output"]] for r in records if r["task"] == task],
        )
        for task in TASKS
    }
    assert scores["name_conversion-s2f"]["element_match"] == 1.0
    assert scores["property_prediction-logp"]["rmse"] == 0.0
    assert scores["property_prediction-tpsa"]["mae"] == 0.0
    assert scores["property_prediction-lipinski"]["accuracy"] == 1.0
    assert all(s["no_answer"] == 0.0 for s in scores.values())
    assert all(s["n"] == sum(r["task"] == task for r in records) for task, s in scores.items())


def test_subset_of_tasks_and_bad_arguments(tmp_path: Path) -> None:
    info = build_dataset(tmp_path / "one", tasks=["property_prediction-tpsa"], max_molecules=20)
    assert list(info["counts"]) == ["property_prediction-tpsa"]
    assert sorted(p.name for p in (tmp_path / "one" / "train").iterdir()) == ["property_prediction-tpsa.jsonl"]
    with pytest.raises(DataError, match="unknown"):
        build_dataset(tmp_path / "x", tasks=["forward_synthesis"])
    with pytest.raises(DataError, match="split_fractions"):
        build_dataset(tmp_path / "x", max_molecules=20, split_fractions=(0.5, 0.2, 0.2))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by fedhpc"):
        build_dataset(foreign, max_molecules=20)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_build_skips_unusable_molecules(tmp_path: Path) -> None:
    source = tmp_path / "mols.smi"
    source.write_text("CCO 1\nnot_a_smiles 2\n[Na+].[Cl-] 3\nOCC 4\nc1ccccc1 5\n[CH3] 6\n")
    info = build_dataset(tmp_path / "ds", source=source, split_fractions=(1.0, 0.0, 0.0))
    assert info["molecules"] == {
        "kept": 2,
        "skipped": {"duplicate": 1, "invalid": 1, "multi_fragment": 1, "radical": 1},
    }
    formulas = sorted(r["raw_output"] for r in load_records(tmp_path / "ds", "train", ["name_conversion-s2f"]))
    assert formulas == ["C2H6O", "C6H6"]


def test_build_federated_writes_facility_dirs(tmp_path: Path) -> None:
    result = build_federated(tmp_path / "fed", "a:s2f,b:logp+tpsa,c:lipinski", max_molecules=40)
    assert result["scheme"] == "by_task"
    assert result["facilities"] == {
        "a": {"name_conversion-s2f": 32},
        "b": {"property_prediction-logp": 32, "property_prediction-tpsa": 32},
        "c": {"property_prediction-lipinski": 32},
    }
    assert sorted(p.name for p in (tmp_path / "fed").iterdir()) == ["dataset", "facilities"]
    facility = load_records(tmp_path / "fed" / "facilities" / "b", "train")
    assert {r["task"] for r in facility} == {"property_prediction-logp", "property_prediction-tpsa"}
    train = {r["sample_id"] for r in load_records(tmp_path / "fed" / "dataset", "train")}
    assert {r["sample_id"] for r in facility} <= train
    with pytest.raises(DataError):
        load_records(tmp_path / "fed" / "facilities" / "b", "test")
    again = build_federated(tmp_path / "fed", "3", scheme="dirichlet", alpha=0.5, max_molecules=40)
    assert sorted(again["facilities"]) == ["facility-1", "facility-2", "facility-3"]
    assert sum(sum(c.values()) for c in again["facilities"].values()) == len(ALL_TASKS) * 32
    assert again["alpha"] == 0.5 and again["scheme"] == "dirichlet"


@pytest.mark.slow
def test_full_build_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    info = build_dataset(tmp_path / "full")
    assert time.perf_counter() - start < 30
    assert info["molecules"]["kept"] > 4500


def test_balanced_build_has_as_many_yes_as_no_in_every_split(tmp_path: Path) -> None:
    info = build_dataset(tmp_path / "b", tasks=["property_prediction-halogen", "property_prediction-ringcount"],
                         max_molecules=300, balanced=True)
    assert info["balanced"] is True
    for split in ("train", "dev", "test"):
        answers = [r["raw_output"] for r in load_records(tmp_path / "b", split, ["property_prediction-halogen"])]
        assert answers.count("Yes") == answers.count("No") > 0, split
        assert info["counts"]["property_prediction-halogen"][split] == len(answers)
        # a count task keeps every molecule of the split
        assert info["counts"]["property_prediction-ringcount"][split] == info["molecules_per_split"][split]
    assert info["counts"]["property_prediction-halogen"]["train"] < info["molecules_per_split"]["train"]


def test_federated_build_holds_only_the_tasks_the_facilities_name(tmp_path: Path) -> None:
    result = build_federated(tmp_path / "fed", "a:halogen,b:ringcount", max_molecules=60)
    assert sorted(result["dataset"]["tasks"]) == ["property_prediction-halogen", "property_prediction-ringcount"]
    assert sorted(p.stem for p in (tmp_path / "fed" / "dataset" / "test").glob("*.jsonl")) == [
        "property_prediction-halogen", "property_prediction-ringcount"]


def test_a_spec_the_records_cannot_meet_leaves_the_earlier_build(tmp_path: Path) -> None:
    out = tmp_path / "fed"
    build_federated(out, "a:ringcount,b:oxygens", max_molecules=40)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(DataError, match="--facilities"):
        build_federated(out, "a=1000:ringcount,b=5:oxygens", max_molecules=40)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fed"], "no temporary folder left behind"


def test_data_chem_balanced_flag_and_bad_spec_exit_code(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedhpc.cli import app

    out = tmp_path / "fed"
    ok = CliRunner().invoke(app, ["data", "chem", "--out", str(out), "--facilities", "a:aromatic,b:cyclic",
                                  "--max-molecules", "120", "--balanced"])
    assert ok.exit_code == 0, ok.output
    answers = [r["raw_output"] for r in load_records(out / "dataset", "test", ["property_prediction-aromatic"])]
    assert answers.count("Yes") == answers.count("No") > 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    bad = CliRunner().invoke(app, ["data", "chem", "--out", str(out), "--facilities", "a=9999:aromatic,b:cyclic",
                                   "--max-molecules", "120"])
    assert bad.exit_code == 2 and "--facilities" in bad.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
