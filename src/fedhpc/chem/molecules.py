"""SMILES answers as LlaSMol compares them: canonical form, InChI identity, fingerprint similarity.

The definitions are those of LlaSMol's `utils/smiles_canonicalization.py`
(`canonicalize_molecule_smiles`, `canonicalize`, `get_molecule_id`) and
`utils/metrics.py` (`calculate_fingerprint_similarity`), re-implemented here:

- a SMILES is split at "."; every part must parse in RDKit (an empty part, as in
  `CCO.`, makes the whole answer invalid); atom-map numbers are cleared; the
  part is written and re-read three times, then rebuilt atom by atom keeping
  only element, formal charge, bonds, bond directions and stereo, and the
  explicit hydrogens of aromatic atoms, with tetrahedral tags copied by
  rdchiral's `copy_chirality`. So isotopes, radicals and unusual explicit
  hydrogen counts are dropped (`[13CH4]` and `C` are the same molecule), as in
  LlaSMol. The result is written as a Kekulé SMILES; the parts are sorted and
  joined with ".";
- two answers are the same molecule when the sets of InChIs of their parts are
  equal (so a repeated part counts once: `CCO.CCO` is `CCO`);
- similarity is the Tanimoto coefficient of MACCS keys, of RDKit path
  fingerprints (`RDKFingerprint` defaults) and of Morgan count fingerprints of
  radius 2, each the highest over the gold answers.

RDKit and rdchiral are imported inside the functions, so that importing the
scorer stays fast and works where the `chem` extra is not installed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rdkit.Chem import Mol

MORGAN_RADIUS = 2


@dataclass(frozen=True)
class Molecule:
    """A valid SMILES answer: its canonical SMILES and the InChI of each of its parts."""

    smiles: str
    inchis: tuple[str, ...]

    @property
    def identity(self) -> tuple[str, ...]:
        """LlaSMol's molecule id: the sorted distinct InChIs of the parts."""
        return tuple(sorted(set(self.inchis)))


@functools.lru_cache(maxsize=65536)
def read_molecule(smiles: str) -> Molecule | None:
    """The canonical form and InChIs of a SMILES answer, or None when LlaSMol counts it invalid.

    Cached: gold answers recur across questions, and a baseline gives one answer to all of them.
    """
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        parts = []
        for part in smiles.split("."):
            canonical = _canonical_part(part)
            if canonical is None:
                return None
            parts.append(canonical)
        joined = ".".join(sorted(parts))
        inchis = []
        for part in joined.split("."):
            mol = Chem.MolFromSmiles(part)
            if mol is None:
                return None
            inchis.append(Chem.MolToInchi(mol))
    return Molecule(joined, tuple(inchis))


def _canonical_part(part: str) -> str | None:
    """One "."-free SMILES in LlaSMol's canonical Kekulé form, or None when any step fails."""
    from rdkit import Chem

    if not part:
        return None
    mol = Chem.MolFromSmiles(part)
    if mol is None:
        return None
    for atom in mol.GetAtoms():
        atom.SetAtomMapNum(0)
    text = Chem.MolToSmiles(mol, kekuleSmiles=False, isomericSmiles=True)
    for _ in range(2):
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            return None
        text = Chem.MolToSmiles(mol, kekuleSmiles=False, isomericSmiles=True)
    try:
        rebuilt = _rebuild(text)
    except (RuntimeError, ValueError):  # RDKit raises these for valence and kekulisation failures
        return None
    kekule = Chem.MolFromSmiles(rebuilt)
    if kekule is None:
        return None
    return Chem.MolToSmiles(kekule, kekuleSmiles=True, isomericSmiles=True)


def _rebuild(smiles: str) -> str:
    """The molecule rebuilt from elements, charges, bonds and stereo only (LlaSMol's `canonicalize`)."""
    from rdchiral.chiral import copy_chirality
    from rdkit import Chem
    from rdkit.Chem import AssignStereochemistry

    source = Chem.MolFromSmiles(smiles.replace(" ", ""), sanitize=False)
    source.UpdatePropertyCache()
    mol = Chem.RWMol(Chem.MolFromSmiles(""))
    for atom in source.GetAtoms():
        copy = Chem.Atom(atom.GetSymbol())
        copy.SetFormalCharge(atom.GetFormalCharge())
        if atom.GetIsAromatic() and atom.GetNoImplicit():
            copy.SetNumExplicitHs(atom.GetNumExplicitHs())
        mol.AddAtom(copy)
    for bond in source.GetBonds():
        begin, end = bond.GetBeginAtom().GetIdx(), bond.GetEndAtom().GetIdx()
        mol.AddBond(begin, end, bond.GetBondType())
        added = mol.GetBondBetweenAtoms(begin, end)
        added.SetBondDir(bond.GetBondDir())
        added.SetStereo(bond.GetStereo())
    for atom in mol.GetAtoms():
        copy_chirality(source.GetAtomWithIdx(atom.GetIdx()), atom)
    flags = Chem.SanitizeFlags
    Chem.SanitizeMol(
        mol, sanitizeOps=flags.SANITIZE_SETAROMATICITY | flags.SANITIZE_PROPERTIES | flags.SANITIZE_ADJUSTHS,
        catchErrors=True,
    )
    AssignStereochemistry(mol, cleanIt=False, force=True, flagPossibleStereoCenters=True)
    return Chem.MolToSmiles(mol, isomericSmiles=True, canonical=True)


def similarities(prediction: Molecule, golds: list[Molecule]) -> tuple[float, float, float]:
    """(MACCS, RDK, Morgan) Tanimoto similarity of `prediction` to its closest gold answer, each in [0, 1]."""
    from rdkit import Chem, DataStructs, rdBase
    from rdkit.Chem import MACCSkeys, rdFingerprintGenerator

    morgan = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS)

    def prints(mol: Mol) -> tuple:
        return MACCSkeys.GenMACCSKeys(mol), Chem.RDKFingerprint(mol), morgan.GetSparseCountFingerprint(mol)

    with rdBase.BlockLogs():
        pred = prints(_mol(prediction))
        best = [0.0, 0.0, 0.0]
        for gold in golds:
            ref = prints(_mol(gold))
            best[0] = max(best[0], DataStructs.FingerprintSimilarity(ref[0], pred[0]))
            best[1] = max(best[1], DataStructs.FingerprintSimilarity(ref[1], pred[1]))
            best[2] = max(best[2], DataStructs.TanimotoSimilarity(ref[2], pred[2]))
    return best[0], best[1], best[2]


def _mol(molecule: Molecule) -> Mol:
    from rdkit import Chem

    mol = Chem.MolFromSmiles(molecule.smiles)
    if mol is None:  # read_molecule already parsed every part of this SMILES
        raise ValueError(f"canonical SMILES {molecule.smiles!r} no longer parses")
    return mol
