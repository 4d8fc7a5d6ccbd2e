"""How many tokens each task may generate, as LlaSMol budgets them: by the kind of answer.

LlaSMol (`config.py`, `TASKS_GENERATION_SETTINGS`) gives formula, number and
yes/no tasks 20 new tokens and everything else 1024 (retrosynthesis 960). Those
budgets are counted in Mistral's tokenizer and sized for 7B models on GPUs. Ours
differ, for two reasons:

- Short answers get 48 (formula, number) and 32 (yes/no) tokens: under
  SmolLM2's tokenizer our templates' longest formula answer ("Sure. The molecular
  formula of this compound is <MOLFORMULA> C21H25ClN2O3S </MOLFORMULA> .") is 36
  tokens. A budget of 20 would cut off the closing tag, and strict extraction
  would then score a correct answer as no answer at all.
- Long answers get CPU-sized budgets: 160 for SMILES (a 50-atom product written
  in a sentence is about 55 tokens), 128 for IUPAC names, and 256 for captions
  (SMolInstruct's descriptions run to a few sentences). A generation stops at the
  end-of-turn token, so a budget costs time only when the model rambles.

`evaluation.max_new_tokens` overrides them: one number for every task, or a
mapping from family to number for some families (the rest keep the defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedhpc.chem.metrics import task_family

DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "formula": 48,
    "number": 48,
    "boolean": 32,
    "smiles": 160,
    "iupac": 128,
    "text": 256,
}


def max_new_tokens_for(
    task: str, record: Mapping[str, Any] | None, setting: int | Mapping[str, int] | None = None
) -> int:
    """The generation budget of `task`: `setting` when it is a number, else its family's entry or default."""
    if isinstance(setting, int):
        return setting
    family = task_family(task, record)
    return dict(setting or {}).get(family, DEFAULT_MAX_NEW_TOKENS[family])
