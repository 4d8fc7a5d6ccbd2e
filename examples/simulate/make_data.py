"""Generate the simulation scenario's facility datasets and held-out set (deterministic, a few seconds).

Four string tasks; each facility holds a different mix (non-IID) and a
different amount (800, 400, 160 and 80 examples: 10x between the largest and
the smallest), as cross-facility data do. The held-out set mixes all four
tasks evenly. Run: python make_data.py [OUT_DIR]  (default: ./data)
"""

import json
import random
import sys
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TASKS = {
    "upper": ("Write this word in capital letters.", str.upper),
    "reverse": ("Write this word backwards.", lambda w: w[::-1]),
    "sort": ("Write the letters of this word in alphabetical order.", lambda w: "".join(sorted(w))),
    "double": ("Write every letter of this word twice.", lambda w: "".join(c + c for c in w)),
}
# facility -> (examples, share of each task)
FACILITIES = {
    "polaris": (800, {"upper": 0.7, "reverse": 0.1, "sort": 0.1, "double": 0.1}),
    "perlmutter": (400, {"upper": 0.1, "reverse": 0.7, "sort": 0.1, "double": 0.1}),
    "aurora": (160, {"upper": 0.1, "reverse": 0.1, "sort": 0.7, "double": 0.1}),
    "frontier": (80, {"upper": 0.1, "reverse": 0.1, "sort": 0.1, "double": 0.7}),
}
HELDOUT = 120


def word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7)))


def record(rng: random.Random, task: str) -> dict[str, str]:
    instruction, answer = TASKS[task]
    w = word(rng)
    return {"instruction": instruction, "input": w, "output": answer(w)}


def write(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for facility, (count, mix) in FACILITIES.items():
        tasks = rng.choices(list(mix), weights=list(mix.values()), k=count)
        write(out / f"{facility}.jsonl", [record(rng, task) for task in tasks])
    write(out / "heldout.jsonl", [record(rng, task) for task in list(TASKS) * (HELDOUT // len(TASKS))])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data")
