"""Per-round vs persistent workers on a real (one-node, local) Slurm cluster: what a round costs.

    .venv/bin/python bench/persistent.py [--rounds 5] [--local-steps 12] [--keep DIR]

Starts `scripts/slurm-cluster.sh` (unless SLURM_CONF points at a running cluster),
then runs the quickstart (2 facilities, 1 rank each) through the
Parsl Slurm provider twice, once with `mode: per-round` and once with
`mode: persistent`, and reads both runs' metrics.jsonl. For every accepted update:

    job seconds  submission (or hand-over to the live worker) until the job/task ended
    train        the worker's own training time
    overhead     job − train: queue wait + process and rank start-up + model/data load

Prints one JSON line:

    {"bench": "persistent", "rounds": N, "per-round": {...}, "persistent": {...},
     "overhead_cut": 1 − persistent overhead / per-round overhead}

where each mode has the mean `round_seconds` (rounds 2..N: round 1 of a persistent
run includes the worker's start), `job_seconds`, `train_seconds`, `load_seconds`,
`overhead_seconds`, and the whole run's `wall_seconds`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart" / "experiment.yaml"
CLUSTER = ROOT / "scripts" / "slurm-cluster.sh"


def facilities(mode: str) -> list[dict]:
    """Both quickstart facilities, one rank each: a persistent job holds its CPU for the whole run, and the
    one-node cluster has two (a 2-rank facility beside a 1-rank one would wait in the queue forever)."""

    def one(name: str) -> dict:
        launcher = {
            "kind": "parsl", "provider": "slurm", "exclusive": False, "cores_per_node": 1,
            "master_addr": "127.0.0.1", "device": "cpu", "status_interval": 0.5,
            "env": {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"},
        }  # fmt: skip
        return {"name": name, "data": str(QUICKSTART.parent / "data" / f"{name}.jsonl"), "mode": mode,
                "launcher": launcher}

    return [one("alpha"), one("beta")]


def run(mode: str, run_dir: Path, rounds: int, local_steps: int, env: dict[str, str]) -> dict:
    overrides = [f"run_dir={run_dir}", f"algorithm.rounds={rounds}", f"algorithm.local_steps={local_steps}",
                 f"facilities={json.dumps(facilities(mode))}"]  # fmt: skip
    command = [sys.executable, "-m", "fedhpc", "run", str(QUICKSTART)]
    command += [word for override in overrides for word in ("--set", override)]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    wall = time.perf_counter() - started
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    finished = {e["attempt"]: e for e in events if e["event"] == "job_finished" and e.get("state") == "done"}
    jobs = []
    for accepted in (e for e in events if e["event"] == "accepted"):
        job = finished.get(accepted.get("attempt"))
        if job is not None:
            jobs.append((accepted["round"], job["seconds"], accepted["train_seconds"], accepted["load_seconds"]))
    later = [j for j in jobs if j[0] > 1] or jobs
    rounds_s = [e["seconds"] for e in events if e["event"] == "round_complete" and e["round"] > 1]
    return {
        "wall_seconds": round(wall, 2),
        "round_seconds": round(statistics.mean(rounds_s), 3),
        "job_seconds": round(statistics.mean(j[1] for j in later), 3),
        "train_seconds": round(statistics.mean(j[2] for j in later), 3),
        "load_seconds": round(statistics.mean(j[3] for j in later), 3),
        "overhead_seconds": round(statistics.mean(j[1] - j[2] for j in later), 3),
        "workers_started": sum(1 for e in events if e["event"] == "worker_started"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=12)
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedhpc-bench-"))
    env = dict(os.environ)
    cluster_dir = None
    if "SLURM_CONF" not in env:
        cluster_dir = Path(tempfile.mkdtemp(prefix="fedhpc-slurm-"))
        subprocess.run(["bash", str(CLUSTER), "start", str(cluster_dir)], check=True, stdout=subprocess.DEVNULL)
        env["SLURM_CONF"] = str(cluster_dir / "slurm.conf")
    try:
        results = {mode: run(mode, work / mode, args.rounds, args.local_steps, env)
                   for mode in ("per-round", "persistent")}  # fmt: skip
    finally:
        if cluster_dir is not None:
            subprocess.run(["bash", str(CLUSTER), "stop", str(cluster_dir)], check=False, stdout=subprocess.DEVNULL)
    cut = 1 - results["persistent"]["overhead_seconds"] / results["per-round"]["overhead_seconds"]
    print(json.dumps({"bench": "persistent", "rounds": args.rounds, "local_steps": args.local_steps, **results,
                      "overhead_cut": round(cut, 3)}))


if __name__ == "__main__":
    main()
