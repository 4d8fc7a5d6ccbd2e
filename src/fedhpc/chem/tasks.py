"""The chemistry tasks: question templates, core tags and RDKit-computed answers.

A task turns one molecule into one instruction record in SMolInstruct's shape
(Yu et al. 2024, "LlaSMol", arXiv:2402.09391; dataset osunlp/SMolInstruct). As in
the release, a template holds an `<INPUT>` and an `<OUTPUT>` placeholder; the
input is the canonical SMILES wrapped in its core tags (`<SMILES> ... </SMILES>`)
and the output is the answer wrapped in the task's output core tags
(`<NUMBER> 1.32 </NUMBER>`), so that evaluation can cut the answer out of free text.

Answers are computed, not curated: every label can be recomputed from the
record's `raw_input` with RDKit, which is what the tests do. RDKit is imported
inside the answer functions so that the task table (names, tags, kinds) is usable
where RDKit is not installed, e.g. by `metrics`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rdkit.Chem import Mol

TaskKind = Literal["formula", "regression", "classification"]

#: Field order of every record we write; the first eleven are SMolInstruct's own
#: features (see its loading script), `sample_id` follows the release's v1.3.0.
RECORD_FIELDS = (
    "input",
    "output",
    "raw_input",
    "raw_output",
    "task",
    "split",
    "input_core_tag_left",
    "input_core_tag_right",
    "output_core_tag_left",
    "output_core_tag_right",
    "target",
    "sample_id",
)

SMILES_TAGS = ("<SMILES>", "</SMILES>")
FORMULA_TAGS = ("<MOLFORMULA>", "</MOLFORMULA>")
NUMBER_TAGS = ("<NUMBER>", "</NUMBER>")
BOOLEAN_TAGS = ("<BOOLEAN>", "</BOOLEAN>")

#: Upper bounds of Lipinski's rule of five (Lipinski et al. 1997, Adv. Drug Deliv. Rev. 23:3).
LIPINSKI_MAX_MOLWT = 500.0
LIPINSKI_MAX_LOGP = 5.0
LIPINSKI_MAX_HBD = 5
LIPINSKI_MAX_HBA = 10

HALOGENS = frozenset({"F", "Cl", "Br", "I"})


@dataclass(frozen=True)
class TaskSpec:
    """One task: how to ask, how to tag, and how to compute the answer from a molecule."""

    name: str
    kind: TaskKind
    output_tags: tuple[str, str]
    templates: tuple[tuple[str, str], ...]  # (input with <INPUT>, output with <OUTPUT>)
    answer: Callable[[Mol], str]
    input_tags: tuple[str, str] = SMILES_TAGS


def format_number(value: float) -> str:
    """Two decimals, and never "-0.00": a sign on zero is noise the model would have to learn."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def mol_formula(mol: Mol) -> str:
    """Hill-order formula with net charge suffix, e.g. `C6H6O`, `C4H12N+` (RDKit `CalcMolFormula`)."""
    from rdkit.Chem import rdMolDescriptors

    return rdMolDescriptors.CalcMolFormula(mol)


def _logp_value(mol: Mol) -> float:
    """Wildman–Crippen logP, cached on the molecule: it is the slowest descriptor and two tasks need it."""
    if not mol.HasProp("_fedhpc_logp"):
        from rdkit.Chem import Crippen

        mol.SetDoubleProp("_fedhpc_logp", Crippen.MolLogP(mol))
    return mol.GetDoubleProp("_fedhpc_logp")


def crippen_logp(mol: Mol) -> str:
    """Wildman–Crippen logP (RDKit `Crippen.MolLogP`), two decimals."""
    return format_number(_logp_value(mol))


def tpsa(mol: Mol) -> str:
    """Topological polar surface area in Å² (Ertl 2000; RDKit `CalcTPSA`, N and O only), two decimals."""
    from rdkit.Chem import rdMolDescriptors

    return format_number(rdMolDescriptors.CalcTPSA(mol))


def lipinski_violations(mol: Mol) -> int:
    """How many of Lipinski's four criteria the molecule breaks (0-4); see `lipinski_pass`."""
    from rdkit.Chem import Descriptors, rdMolDescriptors

    return sum(
        (
            Descriptors.MolWt(mol) > LIPINSKI_MAX_MOLWT,
            _logp_value(mol) > LIPINSKI_MAX_LOGP,
            rdMolDescriptors.CalcNumLipinskiHBD(mol) > LIPINSKI_MAX_HBD,
            rdMolDescriptors.CalcNumLipinskiHBA(mol) > LIPINSKI_MAX_HBA,
        )
    )


def lipinski_pass(mol: Mol) -> str:
    """"Yes" when the molecule meets all four criteria of Lipinski's rule of five, else "No".

    The criteria, each computed by RDKit on the molecule with implicit hydrogens:
    average molecular weight `Descriptors.MolWt` <= 500 Da; Wildman–Crippen
    `MolLogP` <= 5 (Lipinski used CLogP, which RDKit does not have); hydrogen-bond
    donors `CalcNumLipinskiHBD` (hydrogens on N and O) <= 5; hydrogen-bond acceptors
    `CalcNumLipinskiHBA` (count of N and O atoms) <= 10.

    Why all four and not "at most one violation" (Lipinski's looser reading): on
    RDKit's NCI set the looser rule labels 97 % of molecules "Yes", which leaves
    accuracy nothing to measure; requiring all four gives about 13 % "No". The
    question templates say "all four criteria", so the wording matches the label.
    """
    return "Yes" if lipinski_violations(mol) == 0 else "No"


S2F = TaskSpec(
    name="name_conversion-s2f",
    kind="formula",
    output_tags=FORMULA_TAGS,
    answer=mol_formula,
    templates=(
        ("What is the molecular formula of the compound <INPUT> ?", "The molecular formula is <OUTPUT> ."),
        ("Give the molecular formula of the molecule with the SMILES <INPUT> .", "<OUTPUT>"),
        ("<INPUT> Determine the molecular formula of this molecule.", "Its molecular formula is <OUTPUT> ."),
        ("Convert the following SMILES into a molecular formula: <INPUT>", "<OUTPUT>"),
        (
            "Could you tell me the molecular formula of <INPUT> ?",
            "Sure. The molecular formula of this compound is <OUTPUT> .",
        ),
    ),
)

LOGP = TaskSpec(
    name="property_prediction-logp",
    kind="regression",
    output_tags=NUMBER_TAGS,
    answer=crippen_logp,
    templates=(
        ("What is the Crippen logP of the molecule <INPUT> ?", "Its Crippen logP is <OUTPUT> ."),
        (
            "Estimate the octanol-water partition coefficient (Crippen logP) of <INPUT> .",
            "<OUTPUT>",
        ),
        (
            "<INPUT> Predict the lipophilicity of this compound as a Crippen logP value.",
            "The predicted logP is <OUTPUT> .",
        ),
        ("How lipophilic is <INPUT> ? Answer with its Crippen logP.", "Its logP is <OUTPUT> ."),
        (
            "Compute the Wildman-Crippen logP for the compound with the SMILES <INPUT> .",
            "The Wildman-Crippen logP is <OUTPUT> .",
        ),
    ),
)

TPSA = TaskSpec(
    name="property_prediction-tpsa",
    kind="regression",
    output_tags=NUMBER_TAGS,
    answer=tpsa,
    templates=(
        ("What is the topological polar surface area (TPSA) of <INPUT> ?", "Its TPSA is <OUTPUT> Å²."),
        ("Calculate the TPSA of the molecule <INPUT> in square ångströms.", "<OUTPUT>"),
        (
            "<INPUT> How large is the topological polar surface area of this compound?",
            "The topological polar surface area is <OUTPUT> Å².",
        ),
        ("Give the TPSA (in Å²) of the compound with the SMILES <INPUT> .", "<OUTPUT>"),
        ("Predict the polar surface area of <INPUT> from its topology.", "The TPSA is <OUTPUT> Å²."),
    ),
)

LIPINSKI = TaskSpec(
    name="property_prediction-lipinski",
    kind="classification",
    output_tags=BOOLEAN_TAGS,
    answer=lipinski_pass,
    templates=(
        ("Does <INPUT> satisfy all four criteria of Lipinski's rule of five?", "<OUTPUT>"),
        (
            "Is the molecule <INPUT> fully compliant with Lipinski's rule of five "
            "(molecular weight at most 500, logP at most 5, at most 5 hydrogen-bond donors "
            "and at most 10 hydrogen-bond acceptors)?",
            "<OUTPUT>",
        ),
        ("<INPUT> Does this compound pass Lipinski's rule of five without a single violation?", "<OUTPUT>"),
        ("Check Lipinski's rule of five for <INPUT> . Are all four criteria met?", "<OUTPUT>"),
    ),
)

def has_halogen(mol: Mol) -> str:
    """"Yes" when any atom is fluorine, chlorine, bromine or iodine, else "No"."""
    return "Yes" if any(atom.GetSymbol() in HALOGENS for atom in mol.GetAtoms()) else "No"


def has_aromatic_ring(mol: Mol) -> str:
    """"Yes" when RDKit's aromaticity model marks any atom aromatic, else "No".

    The record's SMILES is Kekulé (alternating single and double bonds, as
    SMolInstruct writes them), so the answer is not a matter of spotting lowercase letters.
    """
    return "Yes" if any(atom.GetIsAromatic() for atom in mol.GetAtoms()) else "No"


#: A carbon with three connections (aliphatic or, as in pyridones, aromatic) double-bonded to an oxygen
#: with no other neighbour: ketones, aldehydes, acids, esters and amides alike; S=O and P=O are not carbonyls.
CARBONYL_SMARTS = "[#6X3]=[OX1]"


def has_carbonyl(mol: Mol) -> str:
    """"Yes" when the molecule matches `CARBONYL_SMARTS`, else "No"."""
    from rdkit import Chem

    return "Yes" if mol.HasSubstructMatch(Chem.MolFromSmarts(CARBONYL_SMARTS)) else "No"


def oxygen_count(mol: Mol) -> str:
    """Number of oxygen atoms."""
    return str(sum(atom.GetAtomicNum() == 8 for atom in mol.GetAtoms()))


def ring_count(mol: Mol) -> str:
    """Number of rings in RDKit's smallest set of smallest rings (`CalcNumRings`)."""
    from rdkit.Chem import rdMolDescriptors

    return str(rdMolDescriptors.CalcNumRings(mol))


def has_ring(mol: Mol) -> str:
    """"Yes" when the molecule has at least one ring (`ring_count` > 0), else "No"."""
    return "Yes" if mol.GetRingInfo().NumRings() else "No"


def aromatic_ring_count(mol: Mol) -> str:
    """Number of aromatic rings (`CalcNumAromaticRings`): rings whose every bond is aromatic."""
    from rdkit.Chem import rdMolDescriptors

    return str(rdMolDescriptors.CalcNumAromaticRings(mol))


def heavy_atom_count(mol: Mol) -> str:
    """Number of non-hydrogen atoms (`GetNumHeavyAtoms`)."""
    return str(mol.GetNumHeavyAtoms())


HALOGEN = TaskSpec(
    name="property_prediction-halogen",
    kind="classification",
    output_tags=BOOLEAN_TAGS,
    answer=has_halogen,
    templates=(
        ("Does the molecule <INPUT> contain a halogen atom (F, Cl, Br or I)?", "<OUTPUT>"),
        ("Is there any fluorine, chlorine, bromine or iodine atom in <INPUT> ?", "<OUTPUT>"),
        ("<INPUT> Is this compound halogenated?", "<OUTPUT>"),
    ),
)

AROMATIC = TaskSpec(
    name="property_prediction-aromatic",
    kind="classification",
    output_tags=BOOLEAN_TAGS,
    answer=has_aromatic_ring,
    templates=(
        ("Does the molecule <INPUT> contain an aromatic ring?", "<OUTPUT>"),
        ("Is any ring of <INPUT> aromatic?", "<OUTPUT>"),
        ("<INPUT> Does this compound have an aromatic ring system?", "<OUTPUT>"),
    ),
)

CARBONYL = TaskSpec(
    name="property_prediction-carbonyl",
    kind="classification",
    output_tags=BOOLEAN_TAGS,
    answer=has_carbonyl,
    templates=(
        ("Does the molecule <INPUT> contain a carbonyl group (C=O)?", "<OUTPUT>"),
        ("Is there a C=O carbonyl in <INPUT> ?", "<OUTPUT>"),
        ("<INPUT> Does this compound have a carbonyl group?", "<OUTPUT>"),
    ),
)

OXYGENS = TaskSpec(
    name="property_prediction-oxygens",
    kind="regression",
    output_tags=NUMBER_TAGS,
    answer=oxygen_count,
    templates=(
        ("How many oxygen atoms does the molecule <INPUT> have?", "<OUTPUT>"),
        ("Count the oxygen atoms in <INPUT> .", "<OUTPUT>"),
        ("<INPUT> How many oxygen atoms are in this compound?", "<OUTPUT>"),
    ),
)

RINGS = TaskSpec(
    name="property_prediction-ringcount",
    kind="regression",
    output_tags=NUMBER_TAGS,
    answer=ring_count,
    templates=(
        ("How many rings does the molecule <INPUT> have?", "<OUTPUT>"),
        ("Count the rings in <INPUT> .", "<OUTPUT>"),
        ("<INPUT> How many rings are in this structure?", "<OUTPUT>"),
    ),
)

CYCLIC = TaskSpec(
    name="property_prediction-cyclic",
    kind="classification",
    output_tags=BOOLEAN_TAGS,
    answer=has_ring,
    templates=(
        ("Does the molecule <INPUT> contain a ring?", "<OUTPUT>"),
        ("Is <INPUT> a cyclic compound (at least one ring)?", "<OUTPUT>"),
        ("<INPUT> Does this structure have any ring?", "<OUTPUT>"),
    ),
)

AROMATIC_RINGS = TaskSpec(
    name="property_prediction-aromaticrings",
    kind="regression",
    output_tags=NUMBER_TAGS,
    answer=aromatic_ring_count,
    templates=(
        ("How many aromatic rings does the molecule <INPUT> have?", "<OUTPUT>"),
        ("Count the aromatic rings in <INPUT> .", "<OUTPUT>"),
        ("<INPUT> How many of this compound's rings are aromatic?", "<OUTPUT>"),
    ),
)

HEAVY_ATOMS = TaskSpec(
    name="property_prediction-heavyatoms",
    kind="regression",
    output_tags=NUMBER_TAGS,
    answer=heavy_atom_count,
    templates=(
        ("How many heavy (non-hydrogen) atoms does the molecule <INPUT> have?", "<OUTPUT>"),
        ("Count the non-hydrogen atoms of <INPUT> .", "<OUTPUT>"),
        ("<INPUT> How many heavy atoms does this compound contain?", "<OUTPUT>"),
    ),
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        S2F, LOGP, TPSA, LIPINSKI, HALOGEN, AROMATIC, CARBONYL, CYCLIC, RINGS, AROMATIC_RINGS, OXYGENS, HEAVY_ATOMS
    )
}
ALL_TASKS: tuple[str, ...] = tuple(TASKS)

def stable_int(*parts: object) -> int:
    """A 64-bit integer from sha256 of the parts: same on every machine and Python (unlike `hash`)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def make_record(spec: TaskSpec, mol: Mol, smiles: str, split: str, *, seed: int, index: int) -> dict[str, Any]:
    """One record for `spec` about `mol` (written as `smiles`); the template is a seeded choice.

    The choice depends on (seed, task, smiles) only, so a molecule keeps its
    wording when `max_molecules` or the split fractions change.
    """
    template_in, template_out = spec.templates[stable_int(seed, spec.name, smiles) % len(spec.templates)]
    answer = spec.answer(mol)
    in_left, in_right = spec.input_tags
    out_left, out_right = spec.output_tags
    return {
        "input": template_in.replace("<INPUT>", f"{in_left} {smiles} {in_right}"),
        "output": template_out.replace("<OUTPUT>", f"{out_left} {answer} {out_right}"),
        "raw_input": smiles,
        "raw_output": answer,
        "task": spec.name,
        "split": split,
        "input_core_tag_left": in_left,
        "input_core_tag_right": in_right,
        "output_core_tag_left": out_left,
        "output_core_tag_right": out_right,
        "target": None,
        "sample_id": f"{spec.name}.{split}.{index}",
    }
