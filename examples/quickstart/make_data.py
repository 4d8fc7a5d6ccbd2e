"""Regenerate the quickstart's two small facility datasets (deterministic).

alpha holds an upper-casing task, beta a word-reversal task: two facilities
whose data differ, as federated data do. Run: python make_data.py
"""

import json
import random
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def words(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7))) for _ in range(count)]


def main() -> None:
    out = Path(__file__).parent / "data"
    out.mkdir(exist_ok=True)
    rng = random.Random(0)
    tasks = {
        "alpha": ("Write this word in capital letters.", str.upper, 240),
        "beta": ("Write this word backwards.", lambda w: w[::-1], 160),
    }
    for facility, (instruction, answer, count) in tasks.items():
        with open(out / f"{facility}.jsonl", "w") as handle:
            for word in words(rng, count):
                record = {"instruction": instruction, "input": word, "output": answer(word)}
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
