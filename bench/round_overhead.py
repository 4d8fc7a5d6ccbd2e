"""What a round costs beyond training and moving bytes: the quickstart with almost no local work.

    .venv/bin/python bench/round_overhead.py [--rounds 4] [--local-steps 1] [--modes per-round persistent] [--keep DIR]

Runs examples/quickstart/experiment.yaml (2 local facilities, LoRA on the tiny
Llama, FedAvg) once per mode, each in its own run directory under a temporary
directory, with `algorithm.local_steps=1` so that training is a sliver of the
round, and `mode: persistent` on both facilities for the persistent run. From
the run's metrics.jsonl (the same events as ledger.sqlite), for every round:

    round_s      round_started → round_complete
    train_s      the critical update's own train_seconds (the critical update: the accepted
                 one whose job the server saw finish last, the one the round waited for)
    transfer_s   staged + pulled seconds (the movers copying the global out and the updates in)
    overhead_s   round_s − train_s − transfer_s: launch, job start-up and model load, polling,
                 verification, aggregation, checkpoint and ledger
    job_extra_s  the critical job's seconds (submission to the server seeing it done) beyond its
                 training: process start, imports, model and data load, writing the update, and
                 the poll that notices it; for a persistent worker, the hand-over through its inbox
    server_s     round_s − the critical job's seconds: staging and launching before it, pulling,
                 verifying, aggregating, writing the global and committing the round after it
    aggregate_s  of that, the `aggregated` event's seconds (reduce, write the global, commit)

Means are over rounds 2..N (round 1 of a persistent run includes the workers'
one-off start, reported as `first_round_s`). Prints one JSON line:

    {"bench": "round_overhead", "rounds": N, "per-round": {...}, "persistent": {...}}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.round_overhead")
ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart" / "experiment.yaml"
Event = dict[str, Any]


def run_quickstart(mode: str, run_dir: Path, rounds: int, local_steps: int) -> float:
    """The quickstart through the real CLI, in its own run directory; returns its wall seconds."""
    overrides = [f"run_dir={run_dir}", f"algorithm.rounds={rounds}", f"algorithm.local_steps={local_steps}"]
    if mode == "persistent":
        overrides += ["facilities.0.mode=persistent", "facilities.1.mode=persistent"]
    command = [sys.executable, "-m", "fedhpc", "run", str(QUICKSTART)]
    command += [word for override in overrides for word in ("--set", override)]
    log.info("%s: %s", mode, " ".join(command))
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.perf_counter() - started


def read_events(run_dir: Path) -> list[Event]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def in_round(events: list[Event], name: str, round: int) -> list[Event]:
    return [e for e in events if e["event"] == name and e.get("round") == round]


def round_costs(events: list[Event], round: int) -> dict[str, float]:
    """One round's split along its critical path: the accepted update whose job the server saw finish last."""
    (complete,) = in_round(events, "round_complete", round)
    (aggregated,) = in_round(events, "aggregated", round)
    finished = {e["attempt"]: e for e in in_round(events, "job_finished", round) if "attempt" in e}
    accepted = [e for e in in_round(events, "accepted", round) if e.get("attempt") in finished]
    critical = max(accepted, key=lambda e: finished[e["attempt"]]["ts"])
    job = finished[critical["attempt"]]["seconds"]
    train = critical.get("train_seconds") or 0.0
    transfer = sum(e["seconds"] for e in in_round(events, "staged", round) + in_round(events, "pulled", round))
    return {
        "round_s": complete["seconds"],
        "train_s": train,
        "transfer_s": transfer,
        "overhead_s": complete["seconds"] - train - transfer,
        "job_extra_s": job - train,
        "server_s": complete["seconds"] - job,
        "aggregate_s": aggregated["seconds"],
    }


def summarize(events: list[Event], rounds: int, wall: float) -> dict[str, Any]:
    """Means over rounds 2..N, plus round 1 and the whole run, rounded for the report."""
    per_round = [round_costs(events, r) for r in range(2, rounds + 1)] or [round_costs(events, 1)]
    means = {key: round(statistics.mean(c[key] for c in per_round), 3) for key in per_round[0]}
    return {
        **means,
        "first_round_s": round(round_costs(events, 1)["round_s"], 3),
        "wall_s": round(wall, 2),
        "workers_started": sum(1 for e in events if e["event"] == "worker_started"),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=["per-round", "persistent"], default=["per-round", "persistent"])
    parser.add_argument("--keep", type=Path, help="keep the run directories here instead of a temporary directory")
    args = parser.parse_args()
    if args.rounds < 2 or args.local_steps < 1:
        parser.error("--rounds must be at least 2 and --local-steps positive")
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedhpc-bench-rounds-"))
    load_before = os.getloadavg()[0]
    try:
        results = {}
        for mode in args.modes:
            wall = run_quickstart(mode, work / mode, args.rounds, args.local_steps)
            results[mode] = summarize(read_events(work / mode), args.rounds, wall)
            log.info("%s: %s", mode, results[mode])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "round_overhead", "rounds": args.rounds, "local_steps": args.local_steps, **results,
                      "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}))  # fmt: skip


if __name__ == "__main__":
    main()
