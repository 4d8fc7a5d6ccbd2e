"""`fedhpc login`, `logout` and `whoami`: the Globus identity that transfers and Compute jobs act as."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedhpc.cli.common import SetOption, console, failure, globus_module, load_or_exit
from fedhpc.errors import FedhpcError


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
        collections = globus_module("facilities").data_access_collections(load_or_exit(experiment, set_))
    try:
        result = globus_module("login").login(collections, local_server=not no_local_server, force=force)
    except FedhpcError as e:
        raise failure(e) from e
    for line in result.lines():
        Console().print(line, highlight=False, soft_wrap=True)


def logout() -> None:
    """Revoke fedhpc's Globus tokens and delete them."""
    try:
        result = globus_module("login").logout()
    except FedhpcError as e:
        raise failure(e) from e
    for line in result.lines():
        Console().print(line, highlight=False, soft_wrap=True)


def whoami() -> None:
    """Show the Globus identity fedhpc acts as, its stored scopes and consents, and when its tokens expire."""
    try:
        state = globus_module("login").whoami()
    except FedhpcError as e:
        raise failure(e) from e
    if state is None:
        console.print("not logged in to Globus; run `fedhpc login EXPERIMENT.yaml`", highlight=False)
        raise typer.Exit(1)
    for line in state.lines():
        Console().print(line, highlight=False, soft_wrap=True)
