"""ε of facility-level DP-FedAvg for facility counts × noise multipliers × rounds, from fedhpc's accountant.

    .venv/bin/python bench/privacy_epsilon_table.py [--delta 1e-5] [--params 4.88e6] [--markdown]

Every facility takes part every round (q = 1), so ε depends on z and the rounds only; what the facility
count N changes is how loud the noise is next to the update. The noise on the mean change is N(0, (zC/N)²)
per coordinate, a vector of norm about z·C·√P/N, while the mean change itself has norm at most C: the
column `noise_to_signal` is that ratio, z·√P/N, for P trainable parameters (default: the flagship's LoRA,
r = 16 on every projection of SmolLM2-135M, 4.88M). A second table samples Poisson at q < 1 from a
large population, where amplification by sampling lowers ε. One JSON line; --markdown prints the tables
docs/privacy.md shows instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

from fedhpc.privacy import epsilon_after

FACILITIES = (4, 10, 30, 100, 1000)
MULTIPLIERS = (0.5, 1.0, 2.0, 5.0)
ROUNDS = (10, 100)
SAMPLED = ((1000, 0.1), (1000, 0.01), (10000, 0.01))  # (N, q): expected participants q·N per round


def full_participation(delta: float, params: float) -> list[dict]:
    epsilons = {(z, r): epsilon_after(z, 1.0, r, delta) for z in MULTIPLIERS for r in ROUNDS}
    return [
        {"facilities": n, "noise_multiplier": z, "rounds": r, "sampling_rate": 1.0, "epsilon": round(epsilons[z, r], 2),
         "noise_std_over_c": round(z / n, 5), "noise_to_signal": round(z * math.sqrt(params) / n, 2)}
        for n in FACILITIES for z in MULTIPLIERS for r in ROUNDS
    ]


def sampled(delta: float, params: float) -> list[dict]:
    return [
        {"facilities": n, "noise_multiplier": z, "rounds": r, "sampling_rate": q,
         "epsilon": round(epsilon_after(z, q, r, delta), 2),
         "noise_to_signal": round(z * math.sqrt(params) / (q * n), 2)}
        for n, q in SAMPLED for z in MULTIPLIERS for r in ROUNDS
    ]


def markdown(rows: list[dict], sampled_rows: list[dict]) -> str:
    lines = ["ε at q = 1 (every facility, every round; the same for every N):", "",
             "| z | ε after 10 rounds | ε after 100 rounds |", "|---|---|---|"]
    by_z = {(row["noise_multiplier"], row["rounds"]): row["epsilon"] for row in rows}
    lines += [f"| {z:g} | {by_z[z, 10]:.1f} | {by_z[z, 100]:.1f} |" for z in MULTIPLIERS]
    lines += ["", "Noise norm on the mean change ÷ the largest possible change (z·√P/N):", "",
              "| N | " + " | ".join(f"z = {z:g}" for z in MULTIPLIERS) + " |", "|---" * (len(MULTIPLIERS) + 1) + "|"]
    ratio = {(row["facilities"], row["noise_multiplier"]): row["noise_to_signal"] for row in rows}
    lines += [f"| {n} | " + " | ".join(f"{ratio[n, z]:g}" for z in MULTIPLIERS) + " |" for n in FACILITIES]
    lines += ["", "Poisson sampling at rate q from N facilities (q·N expected per round):", "",
              "| N | q | z | ε after 10 rounds | ε after 100 rounds | noise ÷ change |", "|---|---|---|---|---|---|"]
    by_key = {(r["facilities"], r["sampling_rate"], r["noise_multiplier"], r["rounds"]): r for r in sampled_rows}
    for n, q in SAMPLED:
        for z in MULTIPLIERS:
            ten, hundred = by_key[n, q, z, 10], by_key[n, q, z, 100]
            lines.append(f"| {n} | {q:g} | {z:g} | {ten['epsilon']:.2f} | {hundred['epsilon']:.2f} | "
                         f"{ten['noise_to_signal']:g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--params", type=float, default=4.88e6, help="trainable parameters P")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables instead of JSON")
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # the RDP series' convergence notes at small orders
    rows, sampled_rows = full_participation(args.delta, args.params), sampled(args.delta, args.params)
    if args.markdown:
        print(markdown(rows, sampled_rows))
        return
    print(json.dumps({"bench": "privacy_epsilon_table", "delta": args.delta, "params": args.params,
                      "full_participation": rows, "sampled": sampled_rows}))


if __name__ == "__main__":
    main()
