"""The `fedhpc` command: thin commands that parse, load the config and call the library.

Exit codes (`fedhpc.errors.ExitCode`, listed in docs/configuration.md): 0
success, 1 a run-time failure (a mismatched run directory, a failed init), 2 a bad
experiment file, bad arguments or bad data; `run` adds 3 quorum not met, 4 time
limit, 5 completed with failed facilities, 130/143 interrupted.

The commands live one group to a module; this one builds the app, holds the
global options, and registers the commands in the order `fedhpc --help` lists them.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Annotated

import typer

from fedhpc.cli import data, export, globus, run, validate, worker
from fedhpc.cli import eval as evaluation

app = typer.Typer(add_completion=True, no_args_is_help=True, help="Federated fine-tuning across HPC facilities.")
data_app = typer.Typer(no_args_is_help=True, help="Build datasets.")
app.add_typer(data_app, name="data")


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"fedhpc {version('fedhpc')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs on stderr.")] = False,
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not verbose:
        # peft imports bitsandbytes wherever it is installed, and on a CPU its import warns that an optional
        # kernel package is missing: a line in every command's and every job's stderr that asks nothing of
        # the user. Its errors still show.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


for command in (validate.validate, globus.login, globus.logout, globus.whoami, run.run, run.simulate, run.report):
    app.command()(command)
app.command(name="eval")(evaluation.evaluate)
for command in (evaluation.score, export.export, run.status, worker.worker):
    app.command()(command)
data_app.command("chem")(data.data_chem)
data_app.command("smolinstruct")(data.data_smolinstruct)
