"""The `fedhpc` command: thin commands that parse, load the config and call the library.

Exit codes: 0 success, 1 a run-time failure (a facility, the quorum, a
mismatched run directory), 2 a bad experiment file or bad arguments.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedhpc.config import Experiment, load_experiment
from fedhpc.errors import ConfigError, FedhpcError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated fine-tuning across HPC facilities.")
data_app = typer.Typer(no_args_is_help=True, help="Build datasets.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)

SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set algorithm.rounds=5 (repeatable).")
]
ExperimentArg = Annotated[Path, typer.Argument(help="The experiment file (YAML).")]


def _load(path: Path, overrides: list[str] | None) -> Experiment:
    try:
        return load_experiment(path, overrides or [])
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e


def _fail(error: FedhpcError) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


@app.command()
def validate(experiment: ExperimentArg, set_: SetOption = None) -> None:
    """Check an experiment file without running anything."""
    exp = _load(experiment, set_)
    out = Console()
    out.print(f"[green]ok[/green] {experiment}: experiment {exp.name!r}, {exp.algorithm.rounds} rounds of {exp.algorithm.name}")
    out.print(f"  model {exp.model.source} ({exp.model.dtype}, peft={exp.model.peft}), run dir {exp.resolved_run_dir()}")
    for facility in exp.facilities:
        out.print(
            f"  facility {facility.name}: {facility.launcher.kind} x{facility.launcher.nprocs}, "
            f"mover {facility.mover.kind}, data {facility.data}"
        )


@app.command()
def run(experiment: ExperimentArg, set_: SetOption = None) -> None:
    """Run (or resume) a federated experiment."""
    from fedhpc.report.progress import ProgressView
    from fedhpc.run.orchestrator import run_experiment

    exp = _load(experiment, set_)
    try:
        with ProgressView(exp.name, exp.algorithm.rounds, [f.name for f in exp.facilities]) as progress:
            summary = run_experiment(exp, progress)
            progress.message(
                f"done: {len(summary.rounds_completed) - 1} rounds in {summary.seconds:.1f} s; "
                f"final global model in {summary.final_global}"
            )
    except FedhpcError as e:
        raise _fail(e) from e


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Show the completed rounds and the latest events of a run."""
    from fedhpc.run.ledger import Ledger
    from fedhpc.run.rundir import RunDir

    directory = RunDir(run_dir)
    if not directory.exists():
        console.print(f"[red]error:[/red] {run_dir} has no ledger.sqlite; is it a run directory?")
        raise typer.Exit(2)
    ledger = Ledger(directory.ledger_path)
    out = Console()
    out.print(f"{run_dir}: rounds complete {ledger.completed_rounds()}")
    for event in ledger.events()[-15:]:
        where = " ".join(str(x) for x in (f"r{event.round}" if event.round is not None else "", event.facility or "") if x)
        out.print(f"  {event.event:<14} {where:<16} {_brief(event.detail)}", highlight=False)
    ledger.close()


def _brief(detail: dict) -> str:
    keys = ("state", "reason", "returncode", "num_updates", "seconds", "bytes")
    return " ".join(f"{k}={detail[k]:.2f}" if isinstance(detail.get(k), float) else f"{k}={detail[k]}" for k in keys if k in detail)


@app.command()
def worker(task: Annotated[Path, typer.Option("--task", help="The task.json the server staged.")]) -> None:
    """Run one job at a facility (started by the launcher on every rank)."""
    from fedhpc.worker.main import run_task

    run_task(task)
