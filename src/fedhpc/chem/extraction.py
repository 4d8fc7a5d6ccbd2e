"""Cutting the answer out of generated text: LlaSMol's strict rule, and our older tolerant one.

SMolInstruct answers carry their core between output core tags
(`The formula is <MOLFORMULA> C6H6O </MOLFORMULA> .`). LlaSMol's evaluation
(`extract_prediction.py`, `extract_answer_part`, mode "tag") takes the text
between the *first* occurrence of the left tag and the *first* occurrence of the
right tag, matched case-sensitively, and stripped; a missing tag of either side
means no answer. Because both searches start at the beginning of the text, a right
tag that comes before the first left tag leaves an empty slice, which is also no
answer. Tasks without core tags (captioning) take the whole text less the
`<unk>` and `</s>` tokens. `extract_answer` follows that rule by default.

`extract_core` is the tolerant rule fedhpc used before, kept for `--lenient`
scoring and for cutting gold answers out of well-formed outputs: tags matched
case-insensitively, the right tag searched after the left one, and a missing
right tag forgiven.
"""

from __future__ import annotations

import re

from fedhpc.errors import DataError

#: Tokens LlaSMol removes from an untagged answer ("direct" extraction).
UNTAGGED_NOISE = ("<unk>", "</s>")


def extract_answer(text: str, left: str | None, right: str | None, *, lenient: bool = False) -> str | None:
    """The answer core of one generated text, or None for "no answer" (nothing, or only blanks, between the tags).

    `left = right = None` is a task without core tags: the whole text is the
    answer. `lenient=True` applies `extract_core` instead of LlaSMol's rule.
    """
    if (left is None) != (right is None):
        raise DataError(f"output core tags must both be set or both be null, got {left!r} and {right!r}")
    if lenient:
        return extract_core(text, left, right)
    if left is None or right is None:
        for token in UNTAGGED_NOISE:
            text = text.replace(token, "")
        core = text
    else:
        start, end = text.find(left), text.find(right)
        if start < 0 or end < 0:
            return None
        core = text[start + len(left) : end]
    core = core.strip()
    return core or None


def extract_core(text: str, left: str | None, right: str | None) -> str | None:
    """The text between the first `left` tag and the `right` tag after it, stripped; None if absent or empty.

    Tolerant on purpose: tags are matched case-insensitively, and a missing right
    tag is forgiven (the answer then runs to the next `<` or line end, which also
    drops end-of-turn tokens such as `<|im_end|>`, less the " ." that ends
    SMolInstruct's sentences). `left=None` (a task without core tags) takes the
    whole text.
    """
    if left is None:
        core = text
    else:
        lowered = text.lower()
        start = lowered.find(left.lower())
        if start < 0:
            return None
        start += len(left)
        end = lowered.find(right.lower(), start) if right else -1
        if end >= 0:
            core = text[start:end]
        else:  # no right tag: up to the next tag, special token or line break, less a closing " ."
            core = re.split(r"[<\n]", text[start:], maxsplit=1)[0].strip().removesuffix(".")
    core = core.strip()
    return core or None
