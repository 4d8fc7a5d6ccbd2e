"""The `fedhpc` command: thin commands that parse, load the config and call the library.

Exit codes (`fedhpc.errors.ExitCode`): 0 success, 1 a run-time failure (a
mismatched run directory, a failed init), 2 a bad experiment file, bad arguments
or bad data; `run` adds 3 quorum not met, 4 time limit, 130/143 interrupted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

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
    """The experiment, or exit 2 with the error; the message quotes user text, so it is escaped, not markup."""
    try:
        return load_experiment(path, overrides or [])
    except ConfigError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e


def _fail(error: FedhpcError) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


@app.command()
def validate(
    experiment: ExperimentArg,
    set_: SetOption = None,
    online: Annotated[
        bool,
        typer.Option("--online", help="Also check that each Globus Compute endpoint is online and each Globus "
                                      "collection lists and takes a write (needs `fedhpc login`)."),
    ] = False,
    params: Annotated[
        Optional[str],
        typer.Option("--params", help="What-if model size for the memory plan, e.g. 7e9 or 13B (a Llama shape); "
                                      "overrides the model's own shape."),
    ] = None,
    gpus: Annotated[
        Optional[int], typer.Option("--gpus", min=1, help="What-if ranks (GPUs) per job, for every facility.")
    ] = None,
    gpu_memory: Annotated[
        Optional[str], typer.Option("--gpu-memory", help="What-if memory of one GPU, e.g. 40GiB, for every facility.")
    ] = None,
) -> None:
    """Check an experiment file without running anything; print each facility's memory plan per GPU."""
    from fedhpc.globus.facilities import describe
    from fedhpc.memory_plan import describe_memory

    shape, memory = _what_if(params, gpu_memory)
    exp = _load(experiment, set_)
    out = Console(markup=False, highlight=False, soft_wrap=True)  # every line quotes paths and names from the file
    out.print(f"ok {experiment}: experiment {exp.name!r}, {exp.algorithm.rounds} rounds of {exp.algorithm.name}",
              style="green")
    out.print(f"  model {exp.model.source} ({exp.model.dtype}, peft={exp.model.peft}), run dir {exp.resolved_run_dir()}")
    data_problems: list[str] = []
    for facility in exp.facilities:
        out.print(
            f"  facility {facility.name}: {facility.launcher.kind} x{facility.launcher.nprocs}, "
            f"mover {facility.mover.kind}, data {facility.data}"
            + (", persistent worker" if facility.mode == "persistent" else ""),
        )
        for line in describe(facility):
            out.print(f"    {line}")
        data_problems += _check_data(facility, out)
    if data_problems:
        for problem in data_problems:
            console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    for line in describe_memory(exp, shape, gpus=gpus, gpu_memory=memory):
        out.print(line)
    if online:
        try:
            checks = _globus_module("online_checks").run_online_checks(exp)
        except FedhpcError as e:
            raise _fail(e) from e
        for check in checks:
            out.print(check.line())
        if not checks:
            out.print("no Globus endpoint or collection to check online")
        if not all(check.ok for check in checks):
            raise typer.Exit(1)


def _check_data(facility: Any, out: Console) -> list[str]:
    """`validate`: read the first records of a facility's data as its worker will, if this machine can reach it.

    Returns the problem (the worker's own `DataError`, naming file and line) or nothing; writes nothing.
    """
    from fedhpc.errors import DataError
    from fedhpc.train_examples import check_examples

    try:
        reachable = Path(facility.data).exists()
    except OSError:  # a remote path this machine cannot even look up (too long here)
        reachable = False
    if not reachable:
        out.print(f"    data not checked: {facility.data} is not reachable from here (read at the facility)")
        return []
    try:
        out.print(f"    data ok: {check_examples(Path(facility.data))}")
    except DataError as e:
        return [f"facility {facility.name}: {e}"]
    return []


def _what_if(params: str | None, gpu_memory: str | None) -> tuple[Any, int | None]:
    """`validate`'s --params (a Llama shape of that size) and --gpu-memory (bytes); a bad one exits 2."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    from fedhpc.model_shape import parse_param_count, shape_for_params

    try:
        shape = shape_for_params(parse_param_count(params)) if params is not None else None
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    try:
        memory = int(TypeAdapter(ByteSize).validate_python(gpu_memory)) if gpu_memory is not None else None
    except ValidationError:
        memory = 0
    if memory is not None and memory <= 0:
        console.print(f"[red]error:[/red] --gpu-memory {gpu_memory!r}: give a size such as 40GiB or 80GB",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    return shape, memory


def _globus_module(name: str) -> Any:
    """A `fedhpc.globus` module, or a clear exit when the globus extra is not installed."""
    import importlib

    try:
        return importlib.import_module(f"fedhpc.globus.{name}")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("globus"):
            raise
        console.print(f"[red]error:[/red] Globus support needs {e.name}: pip install 'fedhpc[globus]'")
        raise typer.Exit(1) from e


@app.command()
def login(
    experiment: Annotated[
        Optional[Path],
        typer.Argument(help="The experiment file: its mapped collections' data_access consents are asked for too."),
    ] = None,
    set_: SetOption = None,
    no_local_server: Annotated[
        bool,
        typer.Option("--no-local-server", help="Show a URL and read the code back, even where a browser could open "
                                               "here (it is the way over SSH anyway)."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Log in again even if the stored login suffices.")] = False,
) -> None:
    """Log in to Globus for Transfer and Compute (refresh tokens kept in ~/.fedhpc, mode 0600)."""
    collections: list[str] = []
    if experiment is not None:
        collections = _globus_module("facilities").data_access_collections(_load(experiment, set_))
    try:
        result = _globus_module("login").login(collections, local_server=not no_local_server, force=force)
    except FedhpcError as e:
        raise _fail(e) from e
    for line in result.lines():
        Console().print(line, highlight=False, soft_wrap=True)


@app.command()
def logout() -> None:
    """Revoke fedhpc's Globus tokens and delete them."""
    try:
        result = _globus_module("login").logout()
    except FedhpcError as e:
        raise _fail(e) from e
    for line in result.lines():
        Console().print(line, highlight=False, soft_wrap=True)


@app.command()
def whoami() -> None:
    """Show the Globus identity fedhpc acts as, its stored scopes and consents, and when its tokens expire."""
    try:
        state = _globus_module("login").whoami()
    except FedhpcError as e:
        raise _fail(e) from e
    if state is None:
        console.print("not logged in to Globus; run `fedhpc login EXPERIMENT.yaml`", highlight=False)
        raise typer.Exit(1)
    for line in state.lines():
        Console().print(line, highlight=False, soft_wrap=True)


@app.command()
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
    exp = _load(experiment, set_)
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


@app.command()
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
        raise _fail(e) from e
    out.mkdir(parents=True, exist_ok=True)
    results = {"scenario": str(scenario), "target_loss": target_loss, "horizon": horizon,
               "outcomes": [o.as_dict() for o in outcomes]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    Console().print(markdown_table(outcomes, target_loss, horizon), highlight=False, soft_wrap=True)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Write the run's self-contained HTML report (report.html in the run directory)."""
    from fedhpc.report.html import write_report

    try:
        Console().print(f"wrote {write_report(run_dir)}")
    except FedhpcError as e:
        raise _fail(e) from e


@app.command(name="eval")
def evaluate(
    model: Annotated[str, typer.Option("--model", help="RUN_DIR or RUN_DIR:ROUND (default: the last complete round; 0 is the base model).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="The SMolInstruct release or a built dataset; default: the run's evaluation.data.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split to score (default: the run's evaluation.split or test).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many examples per task (seeded sample).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option("--max-new-tokens", min=1, help="Budget for every task (default: per answer "
                                                                     "family, see docs/chem-eval.md).")
    ] = None,
    num_beams: Annotated[Optional[int], typer.Option("--num-beams", min=1, help="Beam width (1: greedy).")] = None,
    lenient: Annotated[
        bool, typer.Option("--lenient", help="Tolerant answer extraction instead of LlaSMol's strict one.")
    ] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda")] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Also write the results as JSON here, and the answers beside it "
                                                   "(NAME.predictions.jsonl).")
    ] = None,
) -> None:
    """Generate answers for a test split with a run's global model and score them (LlaSMol's metrics)."""
    from fedhpc.errors import DataError
    from fedhpc.evaluation.run_eval import EvalRequest, evaluate_run
    from fedhpc.evaluation.table import print_results

    try:
        request = EvalRequest.from_cli(model, data, split, limit, batch_size, max_new_tokens, device, num_beams,
                                       lenient)
        result = evaluate_run(request, out)
    except (ConfigError, DataError) as e:  # bad arguments or data: exit 2, as `score` and `validate` do
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise _fail(e) from e
    print_results(Console(), result)


@app.command()
def score(
    predictions: Annotated[Path, typer.Argument(help="JSONL, one answer a line: task, split, idx, target, pred.")],
    data: Annotated[Path, typer.Option("--data", help="The SMolInstruct release or a built dataset directory.")],
    split: Annotated[str, typer.Option(help="The split the predictions answer.")] = "test",
    lenient: Annotated[
        bool, typer.Option("--lenient", help="Tolerant answer extraction instead of LlaSMol's strict one.")
    ] = False,
) -> None:
    """Score predictions made anywhere against a dataset split; print the results as JSON (table on stderr)."""
    import json

    from fedhpc.errors import DataError
    from fedhpc.evaluation.score_file import score_predictions
    from fedhpc.evaluation.table import print_results

    try:
        result = score_predictions(predictions, data, split, lenient=lenient)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise _fail(e) from e
    print_results(console, result)
    typer.echo(json.dumps(result, indent=1))


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
def worker(
    task: Annotated[Optional[Path], typer.Option("--task", help="The task.json the server staged.")] = None,
    persistent: Annotated[
        bool, typer.Option("--persistent", help="Stay up and train every task the server assigns in --inbox.")
    ] = False,
    inbox: Annotated[Optional[Path], typer.Option("--inbox", help="--persistent: the worker's inbox directory.")] = None,
    heartbeat_interval: Annotated[
        float, typer.Option("--heartbeat-interval", min=0.01, help="--persistent: seconds between heartbeats.")
    ] = 5.0,
    idle_timeout: Annotated[
        float, typer.Option("--idle-timeout", min=0.0, help="--persistent: exit after this many seconds without work.")
    ] = 600.0,
    device: Annotated[str, typer.Option("--device", help="--persistent: auto, cpu or cuda.")] = "auto",
    store: Annotated[
        Optional[str],
        typer.Option("--store", help="--task: JSON of the proxystore mover the task's files travel through."),
    ] = None,
) -> None:
    """Run one job at a facility, or a persistent worker (started by the launcher on every rank)."""
    problem = None
    if (task is None) == (not persistent):
        problem = "give exactly one of --task TASK.json and --persistent --inbox DIR"
    elif task is not None and inbox is not None:
        problem = "--inbox goes with --persistent, not with --task"
    elif persistent and inbox is None:
        problem = "--persistent needs --inbox DIR"
    elif persistent and store is not None:
        problem = "--store goes with --task, not with --persistent"
    elif device not in ("auto", "cpu", "cuda"):
        problem = f"--device must be auto, cpu or cuda, not {device!r}"
    if problem is not None:
        console.print(f"[red]error:[/red] {problem}", highlight=False)
        raise typer.Exit(2)
    if task is not None:
        from fedhpc.worker.main import run_task

        run_task(task, store)
    else:
        from fedhpc.worker.persistent import run_persistent

        assert inbox is not None
        run_persistent(inbox, heartbeat_interval, idle_timeout, device)


@data_app.command("chem")
def data_chem(
    out: Annotated[Path, typer.Option("--out", help="Output directory (replaced if fedhpc wrote it before).")],
    facilities: Annotated[
        str,
        typer.Option(help="'3' | 'a,b,c' | 'a=0.5,b=0.3' (shares) | 'a=1200,b=600' (counts) | 'a:s2f,b:logp+tpsa' (tasks)"),
    ] = "3",
    scheme: Annotated[Optional[str], typer.Option(help="iid | by_task | dirichlet (default: by_task when tasks are named, else iid)")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (smaller: more skewed)")] = 0.5,
    seed: int = 0,
    max_molecules: Annotated[Optional[int], typer.Option(help="Use only the first N molecules")] = None,
    balanced: Annotated[
        bool, typer.Option("--balanced", help="As many Yes as No records in every split of each yes/no task")
    ] = False,
) -> None:
    """Build a SMolInstruct-format chemistry dataset from RDKit's molecules, split across facilities.

    With tasks named in --facilities, only those tasks are built."""
    from fedhpc.chem.build import build_federated

    from fedhpc.errors import DataError

    try:
        result = build_federated(
            out, facilities, scheme=scheme, alpha=alpha, seed=seed, max_molecules=max_molecules, balanced=balanced
        )
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise _fail(e) from e
    Console().print(f"wrote {out}/dataset (train/dev/test) and {out}/facilities/<name>/train")
    Console().print_json(data={k: v for k, v in result.items() if k in ("facilities", "counts", "scheme")})


@data_app.command("smolinstruct")
def data_smolinstruct(
    release: Annotated[
        Path, typer.Option("--release", help="The extracted SMolInstruct data.zip (data/ or its parent).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output directory (replaced if fedhpc wrote it before).")],
    facilities: Annotated[
        str,
        typer.Option(help="'a,b' | 'a=0.5,b=0.3' | 'a=1200,b=600' | 'a=360:s2f+esol,b:sider' (tasks; a count left "
                          "out: every record of them)"),
    ],
    partition: Annotated[
        Optional[str],
        typer.Option(help="by_task | iid | dirichlet:ALPHA (default: by_task when tasks are named, else iid)"),
    ] = None,
    seed: int = 0,
    selfies: Annotated[bool, typer.Option("--selfies", help="Read raw_selfies/ (SELFIES) instead of raw/.")] = False,
) -> None:
    """Build training and evaluation data from the real SMolInstruct release, split across facilities."""
    from fedhpc.chem.release_build import build_from_release, summary_lines
    from fedhpc.errors import DataError

    try:
        result = build_from_release(release, out, facilities, partition=partition, seed=seed, selfies=selfies)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    except FedhpcError as e:
        raise _fail(e) from e
    Console().print(
        f"wrote {out}/dataset (train, dev, test, test_subset) and {out}/facilities/<name>/train "
        f"({result['scheme']}, seed {seed}{', SELFIES' if selfies else ''})", highlight=False, soft_wrap=True
    )
    for line in summary_lines(result):
        Console().print(line, highlight=False, soft_wrap=True)
