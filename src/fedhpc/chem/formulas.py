"""Molecular formulas compared by their element counts: LlaSMol's rule, and our older tolerant one.

`element_counts` is LlaSMol's "element match" (`utils/metrics.py`,
`parse_molecule` and `count_element_match`; the paper calls it exact match):
a formula is valid when it is letters each followed by optional digits, then
optional charge signs with digits (`([A-Za-z]\\d*)+([+-]\\d*)*`, whole string).
Its counts are read left to right as `[A-Z][a-z]?` symbols with optional
counts, stopping at the first character that is not one (so a lowercase start
such as `c6h6` is valid and has no elements, and `C6H6Xx` counts an `Xx`).
The first charge sign found (`+`, `-2`) is kept as its own entry. Two formulas
match when the counts are equal, so element order does not matter (`C6H6O` ==
`H6C6O`) but spaces, parentheses and lowercase symbols make a formula invalid or
different.

`canonical_formula` is the tolerant reading fedhpc used before (spaces,
parentheses and explicit ones allowed, unknown elements refused), used by
`--lenient` scoring.
"""

from __future__ import annotations

import re
from collections import Counter

ELEMENTS = frozenset(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr
    Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb
    Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf
    Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og D T""".split()
)

Formula = tuple[tuple[str, int], ...]

_LLASMOL_VALID = re.compile(r"([A-Za-z]\d*)+([+\-]\d*)*")
_LLASMOL_SYMBOL = re.compile(r"([A-Z][a-z]?)(\d+)?")
_LLASMOL_CHARGE = re.compile(r"[+\-]\d*")


def element_counts(text: str) -> dict[str, int] | None:
    """LlaSMol's reading of a formula: symbol -> count (plus "+"/"-" -> charge), or None when invalid.

    A count written as 0 is kept (`C0H4` has a `C` entry of 0 and differs from `H4`),
    as in LlaSMol.
    """
    if _LLASMOL_VALID.fullmatch(text) is None:
        return None
    counts: dict[str, int] = {}
    pos = 0
    while (symbol := _LLASMOL_SYMBOL.match(text, pos)) is not None:
        counts[symbol.group(1)] = counts.get(symbol.group(1), 0) + int(symbol.group(2) or 1)
        pos = symbol.end()
    charge = _LLASMOL_CHARGE.search(text)
    if charge is not None:
        sign, digits = charge.group()[0], charge.group()[1:]
        counts[sign] = int(digits) if digits else 1
    return counts


_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)|\((?=.)|\)(\d*)")


def canonical_formula(text: str) -> Formula | None:
    """Element counts of a molecular formula as a sorted tuple, or None if it does not parse (tolerant rule).

    What is made equal: whitespace anywhere (`C6 H6 O` == `C6H6O`), element order
    (`H6C6O` == `C6H6O`, Hill order is not required), explicit ones (`O1` == `O`),
    repeated elements (`CH3CH2OH` == `C2H6O`), parenthesised groups with a
    multiplier (`C(CH3)4` == `C5H12`) and zero counts (dropped). A net charge
    written at the end as RDKit and SMolInstruct do (`+`, `-`, `+2`) is kept as
    a `("charge", n)` entry, so `C4H12N+` != `C4H12N`. What is not made equal:
    letter case (`CO` is carbon monoxide, `Co` cobalt), and isotopes written as
    `D`/`T`, which stay distinct from `H`. Unknown element symbols do not parse.
    """
    body = re.sub(r"\s+", "", text)
    charge = 0
    match = re.search(r"([+-])(\d*)$", body)
    if match:
        charge = int(match.group(2) or 1) * (1 if match.group(1) == "+" else -1)
        body = body[: match.start()]
    if not body:
        return None
    stack: list[Counter[str]] = [Counter()]
    pos = 0
    while pos < len(body):
        token = _FORMULA_TOKEN.match(body, pos)
        if token is None:
            return None
        pos = token.end()
        element, count, close_count = token.group(1), token.group(2), token.group(3)
        if element is not None:
            if element not in ELEMENTS:
                return None
            stack[-1][element] += int(count or 1)
        elif token.group(0) == "(":
            stack.append(Counter())
        else:
            if len(stack) == 1:
                return None
            group = stack.pop()
            for name, n in group.items():
                stack[-1][name] += n * int(close_count or 1)
    if len(stack) != 1:
        return None
    counts = {name: n for name, n in stack[0].items() if n}
    if charge:
        counts["charge"] = charge
    return tuple(sorted(counts.items())) or None
