"""What facility-level DP costs a round: examples/privacy with its `privacy:` section and without it.

    .venv/bin/python bench/dp_round_cost.py [--rounds 3] [--repeat 1] [--keep DIR]

Both runs are the same experiment (the quickstart with `weighting: equal`, 2 local facilities,
LoRA on the tiny Llama) through the real CLI, each in its own run directory; the second
sets `privacy=null`. From each run's ledger, per round:

    round_s       round_complete's seconds (launch to commit)
    aggregate_s   the `aggregated` row's seconds: the server's reduce (with DP: two passes, the
                  norms then the clipped noisy sum), writing the global and its server state
    global_bytes  the global written (the same tensors either way)
    state_bytes   the server state saved with it (with DP: the noise generator's state)
    moved_bytes   staged + pulled bytes (what crossed to and from the facilities)

Means over every round. Prints one JSON line: {"bench": "dp_round_cost", "with": {...}, "without": {...}}.
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
from pathlib import Path

log = logging.getLogger("bench.dp_round_cost")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "privacy" / "experiment.yaml"


def run(run_dir: Path, rounds: int, private: bool) -> None:
    overrides = [f"run_dir={run_dir}", f"algorithm.rounds={rounds}"] + ([] if private else ["privacy=null"])
    command = [sys.executable, "-m", "fedhpc", "run", str(EXAMPLE)]
    command += [word for override in overrides for word in ("--set", override)]
    log.info("%s", " ".join(command))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=3600)


def costs(run_dir: Path) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "src"))
    from fedhpc.run.ledger import Ledger

    ledger = Ledger(run_dir / "ledger.sqlite")
    rounds = [r for r in ledger.completed_rounds() if r > 0]
    aggregated = {e.round: e.detail for e in ledger.events("aggregated") if e.round}
    complete = {e.round: e.detail for e in ledger.events("round_complete") if e.round}
    moved = sum(e.detail.get("bytes", 0) for name in ("staged", "pulled") for e in ledger.events(name) if e.round)
    state = sum(f.stat().st_size for f in (run_dir / "server_state").rglob("*") if f.is_file())
    last_state = sorted((run_dir / "server_state").iterdir())
    ledger.close()
    return {
        "round_s": statistics.mean(complete[r]["seconds"] for r in rounds),
        "aggregate_s": statistics.mean(aggregated[r]["seconds"] for r in rounds),
        "global_bytes": statistics.mean(aggregated[r]["bytes"] for r in rounds),
        "state_bytes": sum(f.stat().st_size for f in last_state[-1].rglob("*") if f.is_file()) if last_state else 0,
        "moved_bytes_per_round": moved / len(rounds),
        "server_state_dir_bytes": state,
        "epsilon_last": aggregated[rounds[-1]].get("epsilon"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    work = args.keep or Path(tempfile.mkdtemp(prefix="dp-cost-"))
    result: dict[str, object] = {"bench": "dp_round_cost", "rounds": args.rounds, "load_before": os.getloadavg()[0]}
    try:
        for label, private in (("without", False), ("with", True)):
            samples = []
            for i in range(args.repeat):
                run_dir = work / f"{label}-{i}"
                run(run_dir, args.rounds, private)
                samples.append(costs(run_dir))
            result[label] = {key: min(s[key] for s in samples) if key.endswith("_s") else samples[0][key]
                             for key in samples[0]}
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
