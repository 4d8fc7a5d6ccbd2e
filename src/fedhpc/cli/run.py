"""`fedhpc run`, `simulate`, `report` and `status`: the commands about running an experiment and its run directory.

`run` is the server (it also resumes); `simulate` runs variants of one experiment
on simulated facilities in virtual time; `report` and `status` read a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedhpc.cli.common import ExperimentArg, SetOption, console, failure, load_or_exit
from fedhpc.errors import ConfigError, FedhpcError


def run(
    experiment: ExperimentArg,
    set_: SetOption = None,
    on_interrupt: Annotated[
        str,
        typer.Option("--on-interrupt", help="On Ctrl-C / SIGTERM, jobs in flight are: cancel, keep (left to finish; "
                                            "a resume collects their updates), or auto: keep on batch launchers "
                                            "(parsl, globus-compute), whose allocation is paid for, else cancel. "
                                            "A second Ctrl-C cancels at once."),
    ] = "auto",
    time_limit: Annotated[
        Optional[float],
        typer.Option("--time-limit", min=0, help="Seconds this server may run: no round starts after they have "
                                                "passed, and the run stops with exit code 4 (the same command "
                                                "resumes). For a server inside an allocation of its own."),
    ] = None,
) -> None:
    """Run (or resume) a federated experiment. Exit codes: see README (0 done, 3 quorum, 130/143 interrupted...)."""
    from fedhpc.errors import ExitCode, exit_code
    from fedhpc.report.html import write_report
    from fedhpc.report.progress import ProgressView
    from fedhpc.run.interrupts import OnInterrupt, StopFlag
    from fedhpc.run.orchestrator import recorded_failures, run_experiment

    try:
        mode = OnInterrupt(on_interrupt)
    except ValueError:
        console.print(f"[red]error:[/red] --on-interrupt {on_interrupt!r}: expected one of auto, cancel, keep",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    exp = load_or_exit(experiment, set_)
    stop = StopFlag()
    names = [f.name for f in exp.facilities]
    try:
        with stop.installed(), ProgressView(exp.name, exp.algorithm.rounds, names) as progress:
            try:
                summary = run_experiment(exp, progress, mode, stop, time_limit)
            finally:
                if (exp.resolved_run_dir() / "metrics.jsonl").exists():
                    with stop.shielded():
                        progress.message(f"report: {write_report(exp.resolved_run_dir())}")
            for line in summary.failures:
                progress.message(f"failed: {line}")
            rounds = len(summary.rounds_completed) - 1
            if not summary.complete:
                progress.message(f"stopped at the time limit after {rounds} of {exp.algorithm.rounds} rounds; "
                                 "run the same command again to resume")
                raise typer.Exit(ExitCode.BUDGET_REACHED)
            progress.message(
                f"done: {rounds} rounds in {summary.seconds:.1f} s"
                + (f", {len(summary.failures)} failure(s) above" if summary.failures else "")
                + f"; final global model in {summary.final_global}"
            )
    except FedhpcError as e:
        if exit_code(e) is ExitCode.QUORUM_NOT_MET:  # which facilities failed, and why, is the next question
            for line in recorded_failures(exp.resolved_run_dir()):
                console.print(f"failed: {line}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"[red]{'stopped' if exit_code(e) >= ExitCode.INTERRUPTED else 'error'}:[/red] {e}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(exit_code(e)) from e


def simulate(
    scenario: Annotated[Path, typer.Argument(help="An experiment whose facilities all use launcher kind: simulated.")],
    heldout: Annotated[Path, typer.Option(help="JSONL examples every global is scored on.")],
    target_loss: Annotated[float, typer.Option(help="The held-out loss to reach.")],
    horizon: Annotated[float, typer.Option(help="Virtual seconds each variant runs.")] = 7200.0,
    compare: Annotated[
        Optional[list[str]],
        typer.Option(help="A variant: NAME (an algorithm) or LABEL:key=value,key=value (repeatable). "
                          "Default: fedavg, fedasync, fedbuff, fedcompass."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the variants' run directories and results.json go.")] = Path(
        "runs/simulate"
    ),
) -> None:
    """Compare algorithms on a simulated heterogeneous scenario: virtual time to a target held-out loss."""
    import json

    from fedhpc.simulate.compare import Variant, markdown_table
    from fedhpc.simulate.compare import simulate as run_simulation

    try:
        variants = [Variant.parse(text) for text in (compare or ["fedavg", "fedasync", "fedbuff", "fedcompass"])]
        outcomes = run_simulation(scenario, variants, heldout, target_loss, horizon, out, console.print)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise failure(e) from e
    out.mkdir(parents=True, exist_ok=True)
    results = {"scenario": str(scenario), "target_loss": target_loss, "horizon": horizon,
               "outcomes": [o.as_dict() for o in outcomes]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    Console().print(markdown_table(outcomes, target_loss, horizon), highlight=False, soft_wrap=True)


def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Write the run's self-contained HTML report (report.html in the run directory)."""
    from fedhpc.report.html import write_report

    try:
        Console().print(f"wrote {write_report(run_dir)}")
    except FedhpcError as e:
        raise failure(e) from e


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
