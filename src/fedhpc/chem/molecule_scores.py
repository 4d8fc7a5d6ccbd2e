"""Scores of SMILES answers (forward synthesis, retrosynthesis, molecule generation, I2S), as LlaSMol's
`calculate_smiles_metrics` defines them (`utils/metrics.py`).

Per question, from its ranked answers (see `molecules` for what "same molecule" means):

- `exact_match` (and `exact_match_topK`): an answer within the first K is the
  same molecule as one of the gold answers (`judge_exact_match`);
- `no_answer`, `invalid`: the first answer is missing, or is not a valid SMILES;
  `valid` is the rest (the paper's "Validity"), all three shares of all questions;
- `maccs_fts`, `rdk_fts`, `morgan_fts`: fingerprint Tanimoto similarity of the
  first answer to its closest gold answer, averaged over the questions whose
  first answer is valid (`calculate_fingerprint_similarity`);
- retrosynthesis only (`judge_multiple_match`): `intersection_match` when the
  answer shares a reactant (by InChI) with a gold answer, and `subset_match`
  when it shares one and all its reactants are among that gold answer's. LlaSMol's
  printed `num_tK_subset` is in fact its intersection count (it prints the same
  array twice); we report both as its function defines them.

A ";" between parts is read as "." in answers and gold answers alike, as LlaSMol
does for these tasks (`TASKS_WITH_SEMICOLON_REPLACE`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedhpc.chem.molecules import Molecule, read_molecule, similarities
from fedhpc.chem.ranked import first_rank, share, top_k_shares
from fedhpc.errors import DataError

FINGERPRINTS = ("maccs_fts", "rdk_fts", "morgan_fts")


def read_smiles(text: str) -> Molecule | None:
    """An answer or gold SMILES as LlaSMol reads it: stripped, ";" as ".", then canonicalised."""
    return read_molecule(text.strip().replace(";", "."))


def smiles_columns(
    task: str, cores: Sequence[Sequence[str | None]], golds: Sequence[Sequence[str]], *, multiple_match: bool
) -> dict[str, np.ndarray]:
    """Per-question ranks, answer status and similarities; `cores[i]` are question i's extracted answers."""
    n = len(cores)
    cols = {
        "no_answer": np.zeros(n, dtype=bool),
        "invalid": np.zeros(n, dtype=bool),
        "exact_rank": np.zeros(n, dtype=np.int64),
        "fingerprints": np.full((n, len(FINGERPRINTS)), math.nan),
    }
    if multiple_match:
        cols["subset_rank"] = np.zeros(n, dtype=np.int64)
        cols["intersection_rank"] = np.zeros(n, dtype=np.int64)
    for i, (answers, gold_texts) in enumerate(zip(cores, golds, strict=True)):
        gold_mols = [_gold(task, i, text) for text in gold_texts]
        mols = [None if core is None else read_smiles(core) for core in answers]
        top = answers[0] if answers else None
        cols["no_answer"][i] = top is None
        cols["invalid"][i] = top is not None and mols[0] is None
        identities = {gold.identity for gold in gold_mols}
        cols["exact_rank"][i] = first_rank(m is not None and m.identity in identities for m in mols)
        if mols and mols[0] is not None:
            cols["fingerprints"][i] = similarities(mols[0], gold_mols)
        if multiple_match:
            overlaps = [_overlaps(m, gold_mols) for m in mols]
            cols["intersection_rank"][i] = first_rank(any(o) for o, _ in overlaps)
            cols["subset_rank"][i] = first_rank(any(s) for _, s in overlaps)
    return cols


def _gold(task: str, question: int, text: str) -> Molecule:
    mol = read_smiles(text)
    if mol is None:
        raise DataError(f"{task}: question {question}: gold answer {text!r} is not a SMILES RDKit can read")
    return mol


def _overlaps(mol: Molecule | None, golds: list[Molecule]) -> tuple[list[bool], list[bool]]:
    """Per gold answer: does `mol` share a part with it, and are all of `mol`'s parts among its parts?"""
    if mol is None:
        return [], []
    parts = set(mol.inchis)
    shared = [bool(parts & set(gold.inchis)) for gold in golds]
    subset = [s and parts <= set(gold.inchis) for s, gold in zip(shared, golds, strict=True)]
    return shared, subset


def smiles_summary(cols: dict[str, np.ndarray], idx: np.ndarray, top_k: int) -> dict[str, float]:
    """The metrics over the questions `idx` (repeats allowed)."""
    no_answer, invalid = share(cols["no_answer"][idx]), share(cols["invalid"][idx])
    result = top_k_shares("exact_match", cols["exact_rank"][idx], top_k)
    if "subset_rank" in cols:
        result.update(top_k_shares("subset_match", cols["subset_rank"][idx], top_k))
        result.update(top_k_shares("intersection_match", cols["intersection_rank"][idx], top_k))
    result.update({"valid": 1.0 - no_answer - invalid, "invalid": invalid, "no_answer": no_answer})
    prints = cols["fingerprints"][idx]
    scored = prints[~np.isnan(prints[:, 0])]
    for j, name in enumerate(FINGERPRINTS):
        result[name] = float(scored[:, j].mean()) if len(scored) else math.nan
    return result
