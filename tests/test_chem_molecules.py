"""SMILES identity and similarity as LlaSMol defines them, and LlaSMol's formula reading."""

from __future__ import annotations

import pytest

pytest.importorskip("rdkit")
pytest.importorskip("rdchiral")

from fedhpc.chem.formulas import canonical_formula, element_counts  # noqa: E402
from fedhpc.chem.molecules import read_molecule, similarities  # noqa: E402


def same(a: str, b: str) -> bool:
    ma, mb = read_molecule(a), read_molecule(b)
    assert ma is not None and mb is not None, (a, b)
    return ma.identity == mb.identity


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("CCO", "OCC"),
        ("c1ccccc1", "C1=CC=CC=C1"),  # aromatic and Kekulé forms
        ("[nH]1cccc1", "C1=CNC=C1"),
        ("CCO.CCO", "CCO"),  # a repeated part counts once
        ("CC(=O)O.CCO", "CCO.CC(=O)O"),  # part order does not matter
        ("[CH3:1][OH:2]", "CO"),  # atom maps are cleared
        ("[13CH4]", "C"),  # LlaSMol's rebuild drops isotopes ...
        ("[CH3]", "C"),  # ... and radicals
        ("[Na+].[O-]C(=O)C", "CC(=O)[O-].[Na+]"),
    ],
)
def test_same_molecule(a: str, b: str) -> None:
    assert same(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O"),  # enantiomers stay apart
        ("F/C=C/F", "F/C=C\\F"),  # so do E and Z
        ("CCO", "CCN"),
        ("CC(=O)[O-].[Na+]", "CC(=O)O"),
    ],
)
def test_different_molecules(a: str, b: str) -> None:
    assert not same(a, b)


@pytest.mark.parametrize("bad", ["CCO.", ".CCO", "c1cccc1", "C(C)(C)(C)(C)C", "xyz", "C1CC"])
def test_invalid_smiles(bad: str) -> None:
    assert read_molecule(bad) is None


def test_canonical_form_is_sorted_kekule() -> None:
    molecule = read_molecule("OCC.c1ccccc1")
    assert molecule is not None
    assert molecule.smiles == "C1=CC=CC=C1.CCO"
    assert len(molecule.inchis) == 2


def test_similarity_is_one_for_the_same_molecule_and_takes_the_closest_gold() -> None:
    aspirin, salicylic, ethanol = (read_molecule(s) for s in ("CC(=O)Oc1ccccc1C(=O)O", "OC(=O)c1ccccc1O", "CCO"))
    assert aspirin is not None and salicylic is not None and ethanol is not None
    assert similarities(aspirin, [aspirin]) == (1.0, 1.0, 1.0)
    alone = similarities(aspirin, [salicylic])
    assert all(0 < s < 1 for s in alone)
    assert similarities(aspirin, [ethanol, salicylic]) == alone  # the closest gold counts
    assert similarities(aspirin, [ethanol, aspirin]) == (1.0, 1.0, 1.0)


def test_similarity_matches_llasmols_rdkit_calls() -> None:
    """LlaSMol calls FingerprintSimilarity on MACCS and RDK fingerprints and the legacy count Morgan API."""
    from rdkit import Chem, DataStructs
    from rdkit.Chem import AllChem, MACCSkeys

    pred, gold = read_molecule("CC(=O)Oc1ccccc1C(=O)O"), read_molecule("OC(=O)c1ccccc1O")
    assert pred is not None and gold is not None
    p, g = Chem.MolFromSmiles(pred.smiles), Chem.MolFromSmiles(gold.smiles)
    maccs_p, maccs_g = set(MACCSkeys.GenMACCSKeys(p).GetOnBits()), set(MACCSkeys.GenMACCSKeys(g).GetOnBits())
    rdk = DataStructs.FingerprintSimilarity(Chem.RDKFingerprint(g), Chem.RDKFingerprint(p))
    morgan = DataStructs.TanimotoSimilarity(AllChem.GetMorganFingerprint(g, 2), AllChem.GetMorganFingerprint(p, 2))
    assert similarities(pred, [gold]) == pytest.approx(
        (len(maccs_p & maccs_g) / len(maccs_p | maccs_g), rdk, morgan)
    )


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("C6H6O", {"C": 6, "H": 6, "O": 1}),
        ("H6C6O", {"C": 6, "H": 6, "O": 1}),
        ("CH3CH2OH", {"C": 2, "H": 6, "O": 1}),
        ("C4H12N+", {"C": 4, "H": 12, "N": 1, "+": 1}),
        ("C4H12N+1", {"C": 4, "H": 12, "N": 1, "+": 1}),
        ("C2H3O2-", {"C": 2, "H": 3, "O": 2, "-": 1}),
        ("CH4O0", {"C": 1, "H": 4, "O": 0}),  # a zero count is kept, as in LlaSMol
        ("c6h6", {}),  # valid but counts nothing: LlaSMol's parser stops at a lowercase letter
        ("C6H6Xx", {"C": 6, "H": 6, "Xx": 1}),  # symbols are not checked against the periodic table
    ],
)
def test_llasmol_element_counts(text: str, counts: dict[str, int]) -> None:
    assert element_counts(text) == counts


@pytest.mark.parametrize("bad", ["", "C6 H6 O", "C(CH3)4", "C6-H6", "six carbons", "+", "6C", "C6H6."])
def test_llasmol_invalid_formulas(bad: str) -> None:
    assert element_counts(bad) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [("C6H6O", "C6 H6 O1"), ("C2H6O", "CH3CH2OH"), ("C5H12", "C(CH3)4"), ("C4H12N+", "C4H12N+1"), ("CH4", "CH4O0")],
)
def test_tolerant_formulas_equal(a: str, b: str) -> None:
    assert canonical_formula(a) is not None and canonical_formula(a) == canonical_formula(b)


@pytest.mark.parametrize("bad", ["", "c6h6", "C6H6Xx", "C6)H6", "(C6H6", "C6-H6", "+"])
def test_tolerant_formulas_that_do_not_parse(bad: str) -> None:
    assert canonical_formula(bad) is None
