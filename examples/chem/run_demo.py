"""`make demo`: build the chemistry data, run the federated fine-tuning, and show each task against its baseline.

Each step is a real `fedhpc` command, echoed so a reader can run it by hand.
Extra arguments are passed to `fedhpc run` (e.g. --set algorithm.rounds=5).

`--local-only` (what `make demo-local` runs) then trains each facility alone on
its own data, with the same rounds, steps and evaluation (plain FedAvg of one
facility: its own model, round after round), and prints the
federated model beside each of them: what federation buys a facility on the
tasks it does not hold, and what it costs on the tasks it does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
EXPERIMENT = HERE / "experiment.yaml"
DATA = HERE / "data"
FACILITIES = (
    "polaris=600:aromatic+ringcount,perlmutter=600:cyclic+aromaticrings,"
    "aurora=200:aromatic+ringcount+cyclic+aromaticrings"
)

console = Console()


def fedhpc(*args: str) -> None:
    console.print(f"[bold]$ fedhpc {' '.join(args)}[/bold]", highlight=False)
    result = subprocess.run([sys.executable, "-m", "fedhpc", *args])
    if result.returncode != 0:
        sys.exit(result.returncode)


def run_dir_of(experiment: Path, overrides: list[str]) -> Path:
    from fedhpc.config import load_experiment

    sets = [overrides[i + 1] for i, arg in enumerate(overrides[:-1]) if arg == "--set"]
    return load_experiment(experiment, sets).resolved_run_dir()


def eval_results(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The base model's results (round 0, if evaluated) and the last evaluated round's."""
    results = sorted((run_dir / "eval").glob("r[0-9][0-9][0-9][0-9].json"))
    if not results:
        sys.exit(f"{run_dir}/eval holds no results: did the run's evaluation fail? See {run_dir}/report.html")
    loaded = [json.loads(path.read_text()) for path in results]
    base = loaded[0] if loaded[0]["round"] == 0 and len(loaded) > 1 else None
    return base, loaded[-1]


def _value(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "n/a"
    metric = entry["metrics"].get(entry["primary"], {})
    return "n/a" if metric.get("value") is None else f"{metric['value']:.3f}"


def _with_interval(metric: dict[str, Any]) -> str:
    if metric.get("value") is None:
        return "n/a"
    ci = metric.get("ci95")
    return f"{metric['value']:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")


def headline_table(base: dict[str, Any] | None, final: dict[str, Any]) -> Table:
    """Per task: the primary metric of the base model, the federated model and the trivial baseline."""
    table = Table(title=f"{final['split']} split, round {final['round']}: federated model against the trivial baseline")
    for column in ("task", "metric", "n", "base model", "federated [95% CI]", "baseline", "baseline [95% CI]", "beats it"):
        table.add_column(column, justify="left" if column in ("task", "metric", "baseline") else "right")
    for task, entry in final["tasks"].items():
        primary = entry["primary"]
        table.add_row(
            task,
            f"{primary} {'↑' if entry['higher_is_better'] else '↓'}",
            str(entry["n"]),
            _value(base["tasks"].get(task) if base else None),
            _with_interval(entry["metrics"].get(primary, {})),
            entry["baseline"]["name"],
            _with_interval(entry["baseline"]["metrics"].get(primary, {})),
            "[green]yes[/green]" if entry["beats_baseline"] else "[red]NO[/red]",
        )
    return table


def local_only_runs(overrides: list[str]) -> dict[str, Path]:
    """Train each facility alone: the same experiment with only that facility, in its own run directory."""
    experiment = yaml.safe_load(EXPERIMENT.read_text())
    runs = {}
    for facility in experiment["facilities"]:
        alone = {
            **experiment,
            "name": f"{experiment['name']}-{facility['name']}-alone",
            "facilities": [facility],
            # Alone, a facility's own training is the model: no server step to scale it (a server learning
            # rate above 1 would overshoot with nothing to average against).
            "algorithm": {**{k: v for k, v in experiment["algorithm"].items() if k != "server"},
                          "name": "fedavg", "min_facilities": 1},
        }
        path = HERE / f".local-only-{facility['name']}.yaml"  # beside the original: its relative paths still hold
        path.write_text(yaml.safe_dump(alone, sort_keys=False))
        fedhpc("run", str(path), *overrides)
        runs[facility["name"]] = run_dir_of(path, overrides)
    return runs


def local_only_table(federated: dict[str, Any], alone: dict[str, dict[str, Any]]) -> Table:
    experiment = yaml.safe_load(EXPERIMENT.read_text())
    holds = {f["name"]: set(_facility_tasks(HERE / f["data"])) for f in experiment["facilities"]}
    table = Table(title="primary metric per task: each facility trained alone vs the federation (* = tasks it holds)")
    table.add_column("trained on", justify="left")
    tasks = list(federated["tasks"])
    for task in tasks:
        entry = federated["tasks"][task]
        table.add_column(f"{task.split('-')[-1]} {entry['primary']} {'↑' if entry['higher_is_better'] else '↓'}",
                         justify="right")
    for name, result in alone.items():
        cells = [_with_interval(result["tasks"][t]["metrics"][result["tasks"][t]["primary"]]) + (" *" if t in holds[name] else "")
                 for t in tasks]
        table.add_row(f"{name} alone", *cells)
    table.add_row("federated (all)", *[_with_interval(federated["tasks"][t]["metrics"][federated["tasks"][t]["primary"]])
                                       for t in tasks])
    table.add_row("trivial baseline", *[_with_interval(federated["tasks"][t]["baseline"]["metrics"][federated["tasks"][t]["primary"]])
                                        for t in tasks])
    return table


def _facility_tasks(folder: Path) -> list[str]:
    return sorted(path.stem for path in folder.glob("train/*.jsonl"))


def main() -> None:
    started = time.time()
    arguments = sys.argv[1:]
    local_only = "--local-only" in arguments
    overrides = [arg for arg in arguments if arg != "--local-only"]
    fedhpc("data", "chem", "--out", str(DATA), "--facilities", FACILITIES, "--balanced")
    fedhpc("run", str(EXPERIMENT), *overrides)
    run_dir = run_dir_of(EXPERIMENT, overrides)
    base, final = eval_results(run_dir)
    console.print(headline_table(base, final))
    console.print(f"report: {run_dir / 'report.html'}  (demo wall time {time.time() - started:.0f} s)")
    if local_only:
        alone = {name: eval_results(path)[1] for name, path in local_only_runs(overrides).items()}
        console.print(local_only_table(final, alone))
        console.print(f"(demo with local-only runs: wall time {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
