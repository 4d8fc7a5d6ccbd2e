"""`fedhpc run`, `simulate`, `report` and `status`: the commands about running an experiment and its run directory.

`run` is the server (it also resumes); `simulate` runs variants of one experiment
on simulated facilities in virtual time; `report` and `status` read a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from fedhpc.cli.common import ExperimentArg, SetOption, console, failure, load_or_exit
from fedhpc.errors import ConfigError, ExitCode, FedhpcError


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
    """Run (or resume) a federated experiment. Exit codes: docs/configuration.md (0 done, 3 quorum, 5 failures...)."""
    from functools import partial

    from fedhpc.errors import exit_code
    from fedhpc.report.html import write_report
    from fedhpc.report.progress import ProgressView
    from fedhpc.run.interrupts import OnInterrupt, StopFlag
    from fedhpc.run.orchestrator import run_experiment
    from fedhpc.run.rundir import RunDir
    from fedhpc.run.status import failure_log, recorded_failures

    try:
        mode = OnInterrupt(on_interrupt)
    except ValueError:
        console.print(f"[red]error:[/red] --on-interrupt {on_interrupt!r}: expected one of auto, cancel, keep",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    exp = load_or_exit(experiment, set_)
    stop = StopFlag()
    names = [f.name for f in exp.facilities]
    logs = partial(failure_log, RunDir(exp.resolved_run_dir()))
    try:
        with stop.installed(), ProgressView(exp.name, exp.algorithm.rounds, names, failure_log=logs) as progress:
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
            if summary.failures:
                raise typer.Exit(ExitCode.COMPLETED_WITH_FAILURES)
    except FedhpcError as e:
        if exit_code(e) is ExitCode.QUORUM_NOT_MET:  # which facilities failed, and why, is the next question
            for line in recorded_failures(exp.resolved_run_dir()):
                console.print(f"failed: {line}", markup=False, highlight=False, soft_wrap=True)
        stopped = exit_code(e) >= ExitCode.INTERRUPTED or exit_code(e) is ExitCode.PRIVACY_BUDGET_SPENT
        console.print(f"[red]{'stopped' if stopped else 'error'}:[/red] {e}",
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


def status(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document (keys: docs/configuration.md).")] = False,
) -> None:
    """Show a run's state and each facility's: state, latest round, last loss, last failure."""
    import json

    from rich.table import Table

    from fedhpc.run.rundir import RunDir
    from fedhpc.run.status import run_status

    if not RunDir(run_dir).exists():
        console.print(f"[red]error:[/red] {escape(str(run_dir))} has no ledger.sqlite; is it a run directory?",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.BAD_INPUT)
    found = run_status(run_dir.absolute())
    out = Console()
    if as_json:
        typer.echo(json.dumps(found.as_dict(), indent=1))  # not through rich, which would wrap long lines
        return
    planned = "?" if found.rounds_planned is None else found.rounds_planned
    line = f"{found.run_dir}: {found.name or '?'} {found.state}, {found.rounds_complete} of {planned} rounds complete"
    if found.best_round is not None:
        line += f", best round {found.best_round}"
    if found.delta is not None:  # privacy on (an epsilon of None: no noise, unbounded)
        line += f", epsilon {'inf' if found.epsilon is None else f'{found.epsilon:.3g}'} at delta {found.delta:g}"
    out.print(line + (f" ({found.reason})" if found.reason else ""), markup=False, highlight=False, soft_wrap=True)
    table = Table(header_style="bold")
    for column in ("facility", "state", "round", "last loss", "last failure"):
        table.add_column(column, overflow="fold")
    for row in found.facilities:
        failure = "-" if row.failure is None else f"round {row.failure_round}: {row.failure}"
        table.add_row(escape(row.name), row.state, "-" if row.round is None else str(row.round),
                      "-" if row.loss is None else f"{row.loss:.4f}", escape(failure))
    out.print(table)
