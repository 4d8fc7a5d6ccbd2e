"""`make demo`: build the chemistry data, run the federated fine-tuning, and show base vs federated.

Each step is a real `fedhpc` command, echoed so a reader can run it by hand.
Extra arguments are passed to `fedhpc run` (e.g. --set algorithm.rounds=5).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
EXPERIMENT = HERE / "experiment.yaml"
DATA = HERE / "data"
FACILITIES = "polaris=360:s2f+lipinski,perlmutter=360:logp+tpsa,aurora=120:s2f+logp+tpsa+lipinski"
HEADLINE = {"exact_match": "higher", "accuracy": "higher", "rmse": "lower", "mae": "lower", "unparseable": "lower"}

console = Console()


def fedhpc(*args: str) -> None:
    console.print(f"[bold]$ fedhpc {' '.join(args)}[/bold]", highlight=False)
    result = subprocess.run([sys.executable, "-m", "fedhpc", *args])
    if result.returncode != 0:
        sys.exit(result.returncode)


def run_dir_of(overrides: list[str]) -> Path:
    from fedhpc.config import load_experiment

    sets = [overrides[i + 1] for i, arg in enumerate(overrides[:-1]) if arg == "--set"]
    return load_experiment(EXPERIMENT, sets).resolved_run_dir()


def comparison_table(run_dir: Path) -> Table:
    results = sorted((run_dir / "eval").glob("r*.json"))
    base, final = json.loads(results[0].read_text()), json.loads(results[-1].read_text())
    table = Table(title=f"test split, {final['examples']} examples: base model vs federated (round {final['round']})")
    for column in ("task", "metric", "base", "federated", "better is"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task, metrics in final["scores"].items():
        for metric, value in metrics.items():
            if metric not in HEADLINE:
                continue
            before = base["scores"].get(task, {}).get(metric)
            table.add_row(task, metric, _fmt(before), _fmt(value), HEADLINE[metric])
    return table


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def main() -> None:
    started = time.time()
    overrides = sys.argv[1:]
    fedhpc("data", "chem", "--out", str(DATA), "--facilities", FACILITIES)
    fedhpc("run", str(EXPERIMENT), *overrides)
    run_dir = run_dir_of(overrides)
    console.print(comparison_table(run_dir))
    console.print(f"report: {run_dir / 'report.html'}  (demo wall time {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
