"""Ranked answers: "matched within the top k" as a per-question rank, so any k is one comparison.

LlaSMol asks for several answers per question (beam search returning k
sequences) and reports `num_tK_...`: questions where any of the first K answers
matched. A question's *rank* is the 1-based position of its first matching
answer, 0 when none matches; "top-k" is then `1 <= rank <= k`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def first_rank(flags: Iterable[bool]) -> int:
    """1-based position of the first true flag, 0 if none."""
    for position, flag in enumerate(flags, start=1):
        if flag:
            return position
    return 0


def share(mask: np.ndarray) -> float:
    """Mean of a boolean array; NaN for an empty one."""
    return float(mask.mean()) if len(mask) else math.nan


def top_k_shares(name: str, ranks: np.ndarray, top_k: int) -> dict[str, float]:
    """`{name: top-1 share, name_top2: ..., name_top{top_k}: ...}` over the given question ranks."""
    result = {name: share((ranks >= 1) & (ranks <= 1))}
    for k in range(2, top_k + 1):
        result[f"{name}_top{k}"] = share((ranks >= 1) & (ranks <= k))
    return result
