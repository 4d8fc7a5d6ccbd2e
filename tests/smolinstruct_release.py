"""A miniature SMolInstruct release, laid out as `data.zip` extracts, written by hand for tests.

Six tasks cover every kind the loading script meets: a formula (s2f), a number
(esol), yes/no (bbbp), dict outputs with one record per target (sider), no
output core tag (molecule_captioning), and several gold answers for one input
(retrosynthesis). Every split has sample files (`test_subset` over `raw/test`),
and `raw_selfies/` mirrors `raw/` with SELFIES strings. The samples skip some
items and reorder others, so a reader that ignores them gets different records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SMILES_TAGS = ["<SMILES>", "</SMILES>"]
SELFIES = {  # SMILES -> SELFIES for the raw_selfies/ copy (what matters here is that they differ)
    "CCO": "[C][C][O]",
    "CCN": "[C][C][N]",
    "CN": "[C][N]",
    "C": "[C]",
    "O": "[O]",
    "CCCl": "[C][C][Cl]",
    "CC(=O)O": "[C][C][=Branch1][C][=O][O]",
    "C1=CC=CC=C1": "[C][=C][C][=C][C][=C][Ring1][=Branch1]",
    "CC(=O)OCC": "[C][C][=Branch1][C][=O][O][C][C]",
    "CC(=O)O.CCO": "[C][C][=Branch1][C][=O][O].[C][C][O]",
    "CC(=O)Cl.CCO": "[C][C][=Branch1][C][=O][Cl].[C][C][O]",
    "CCOC": "[C][C][O][C]",
    "CCO.CI": "[C][C][O].[C][I]",
    "CC=O.N": "[C][C][=O].[N]",
}
SIDER_TARGETS = ("Cardiac disorders", "Hepatobiliary disorders")

# task -> core tags, templates, raw items per split, samples per split ((idx, template_id[, target]) each)
TASKS: dict[str, dict[str, Any]] = {
    "name_conversion-s2f": {
        "tags": {"input": SMILES_TAGS, "output": ["<MOLFORMULA>", "</MOLFORMULA>"]},
        "templates": [
            {"input": "What is the molecular formula of the compound <INPUT> ?", "output": "The formula is <OUTPUT> ."},
            {"input": "<INPUT> Give the formula of this SMILES.", "output": "<OUTPUT>"},
        ],
        "items": {
            "train": [("CCO", "C2H6O"), ("C1=CC=CC=C1", "C6H6"), ("CC(=O)O", "C2H4O2"), ("CCN", "C2H7N")],
            "dev": [("CN", "CH5N")],
            "test": [("C", "CH4"), ("O", "H2O"), ("CCCl", "C2H5Cl")],
        },
        "samples": {
            "train": [(2, 1), (0, 0), (3, 1)],  # item 1 is in no sample: not a record
            "dev": [(0, 0)],
            "test": [(0, 0), (1, 1), (2, 0)],
            "test_subset": [(1, 1)],
        },
    },
    "property_prediction-esol": {
        "tags": {"input": SMILES_TAGS, "output": ["<NUMBER>", "</NUMBER>"]},
        "templates": [{"input": "What is the log solubility of <INPUT> ?", "output": "It is <OUTPUT> ."}],
        "items": {
            "train": [("CCO", "1.10"), ("CCN", "0.93"), ("CCCl", "-0.89")],
            "dev": [("CN", "1.34")],
            "test": [("CC(=O)O", "1.22"), ("C1=CC=CC=C1", "-1.64")],
        },
        "samples": {"train": [(0, 0), (1, 0), (2, 0)], "dev": [(0, 0)], "test": [(0, 0), (1, 0)],
                    "test_subset": [(1, 0)]},  # fmt: skip
    },
    "property_prediction-bbbp": {
        "tags": {"input": SMILES_TAGS, "output": ["<BOOLEAN>", "</BOOLEAN>"]},
        "templates": [{"input": "Can <INPUT> cross the blood-brain barrier?", "output": "<OUTPUT>"}],
        "items": {
            "train": [("CCO", "Yes"), ("CC(=O)O", "No"), ("CCN", "Yes")],
            "dev": [("CN", "Yes")],
            "test": [("C", "Yes"), ("CCCl", "No")],
        },
        "samples": {"train": [(0, 0), (1, 0), (2, 0)], "dev": [(0, 0)], "test": [(0, 0), (1, 0)],
                    "test_subset": [(0, 0), (1, 0)]},  # fmt: skip
    },
    "property_prediction-sider": {
        "tags": {"input": SMILES_TAGS, "output": ["<BOOLEAN>", "</BOOLEAN>"]},
        "templates": [{"input": "Is <INPUT> known for this kind of side effect?", "output": "<OUTPUT>"}],
        "items": {
            "train": [("CCO", {"Cardiac disorders": "Yes", "Hepatobiliary disorders": "No"}),
                      ("CCN", {"Cardiac disorders": "No", "Hepatobiliary disorders": "No"})],
            "dev": [("CN", {"Cardiac disorders": "No", "Hepatobiliary disorders": "Yes"})],
            "test": [("CCCl", {"Cardiac disorders": "Yes", "Hepatobiliary disorders": "Yes"})],
        },  # fmt: skip
        "samples": {
            "train": [(0, 0, "Cardiac disorders"), (0, 0, "Hepatobiliary disorders"), (1, 0, "Cardiac disorders")],
            "dev": [(0, 0, "Hepatobiliary disorders")],
            "test": [(0, 0, "Cardiac disorders"), (0, 0, "Hepatobiliary disorders")],
            "test_subset": [(0, 0, "Hepatobiliary disorders")],
        },
    },
    "molecule_captioning": {
        "tags": {"input": SMILES_TAGS, "output": [None, None]},
        "templates": [{"input": "Describe the molecule <INPUT> .", "output": "<OUTPUT>"}],
        "items": {
            "train": [("CCO", "The molecule is ethanol, a primary alcohol."), ("CCN", "The molecule is ethylamine.")],
            "dev": [("CN", "The molecule is methylamine.")],
            "test": [("CC(=O)O", "The molecule is acetic acid.")],
        },
        "samples": {"train": [(1, 0), (0, 0)], "dev": [(0, 0)], "test": [(0, 0)], "test_subset": [(0, 0)]},
    },
    "retrosynthesis": {
        "tags": {"input": SMILES_TAGS, "output": SMILES_TAGS},
        "templates": [{"input": "Which reactants give <INPUT> ?", "output": "From <OUTPUT> ."}],
        "items": {
            "train": [("CCOC", "CCO.CI")],
            "dev": [("CCN", "CC=O.N")],
            "test": [("CC(=O)OCC", "CC(=O)O.CCO"), ("CC(=O)OCC", "CC(=O)Cl.CCO"), ("CCN", "CC=O.N")],
        },
        "samples": {"train": [(0, 0)], "dev": [(0, 0)], "test": [(0, 0), (1, 0), (2, 0)],
                    "test_subset": [(1, 0), (0, 0)]},  # fmt: skip
    },
}


def selfies_of(text: str) -> str:
    return SELFIES.get(text, text)


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def write_release(parent: Path, tasks: tuple[str, ...] | None = None) -> Path:
    """Write the miniature under `parent/SMolInstruct/data` (as data.zip extracts) and return `parent/SMolInstruct`."""
    root = parent / "SMolInstruct" / "data"
    for task, spec in TASKS.items():
        if tasks is not None and task not in tasks:
            continue
        write_json(root / "core_tag" / f"{task}.json", spec["tags"])
        write_json(root / "template" / "instruction_tuning" / f"{task}.json", spec["templates"])
        smiles_output = spec["tags"]["output"][0] == "<SMILES>"
        for split, items in spec["items"].items():
            for raw, convert in (("raw", False), ("raw_selfies", True)):
                lines = []
                for text, output in items:
                    if convert:
                        text = selfies_of(text)
                        output = selfies_of(output) if smiles_output else output
                    lines.append(json.dumps({"input": text, "output": output, "task": task, "split": split}))
                path = root / raw / split / f"{task}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        for split, samples in spec["samples"].items():
            entries = [
                {"idx": s[0], "template_id": s[1], **({"target": s[2]} if len(s) > 2 else {})} for s in samples
            ]
            write_json(
                root / "sample" / "instruction_tuning" / split / f"{task}.json",
                {"task": task, "split": split, "template_name": "instruction_tuning", "samples": entries},
            )
    return parent / "SMolInstruct"


def expected_records(task: str, split: str, *, selfies: bool = False) -> list[tuple[Any, ...]]:
    """(idx, raw_input, raw_output, target) per record, straight from the tables above: what a reader must give."""
    spec = TASKS[task]
    raw_split = "test" if split == "test_subset" else split
    items = spec["items"][raw_split]
    convert = selfies_of if selfies else str
    smiles_output = spec["tags"]["output"][0] == "<SMILES>"
    rows = []
    for sample in spec["samples"][split]:
        text, output = items[sample[0]]
        target = sample[2] if len(sample) > 2 else None
        answer = output[target] if target else output
        rows.append((sample[0], convert(text), convert(answer) if smiles_output else answer, target))
    return rows
