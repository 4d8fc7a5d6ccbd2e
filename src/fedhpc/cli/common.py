"""What every `fedhpc` command shares: the error console, the experiment options, and the exits they take.

A command reports a problem as one red `error:` line on stderr and exits with
the code `fedhpc.errors.ExitCode` gives it; these helpers keep that wording and
those codes the same across commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from fedhpc.config import Experiment, load_experiment
from fedhpc.errors import ConfigError, FedhpcError

console = Console(stderr=True)

SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set algorithm.rounds=5 (repeatable).")
]
ExperimentArg = Annotated[Path, typer.Argument(help="The experiment file (YAML).")]


def load_or_exit(path: Path, overrides: list[str] | None) -> Experiment:
    """The experiment, or exit 2 with the error; the message quotes user text, so it is escaped, not markup."""
    try:
        return load_experiment(path, overrides or [])
    except ConfigError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e


def failure(error: FedhpcError) -> typer.Exit:
    """Print a run-time failure and return exit 1, for the caller to `raise ... from` the error."""
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def globus_module(name: str) -> Any:
    """A `fedhpc.globus` module, or a clear exit when the globus extra is not installed."""
    import importlib

    try:
        return importlib.import_module(f"fedhpc.globus.{name}")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("globus"):
            raise
        console.print(f"[red]error:[/red] Globus support needs {e.name}: pip install 'fedhpc[globus]'")
        raise typer.Exit(1) from e
