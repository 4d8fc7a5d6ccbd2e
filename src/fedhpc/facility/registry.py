"""Launcher and mover kinds by name: a new backend is one file plus one line here.

The experiment file picks a backend with ``kind:``, validated by pydantic at
load time; these tables map that name to the class, which is built from its
own sub-config only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fedhpc.config import FilesystemMoverConfig, LocalLauncherConfig
from fedhpc.errors import ConfigError
from fedhpc.facility.base import Launcher, Mover
from fedhpc.facility.launchers.local import LocalLauncher
from fedhpc.facility.movers.filesystem import FilesystemMover

# Union-valued as kinds are added to config.py, e.g. LocalLauncherConfig | ParslLauncherConfig.
LauncherConfig = LocalLauncherConfig
MoverConfig = FilesystemMoverConfig
T = TypeVar("T")

LAUNCHERS: dict[str, Callable[[LauncherConfig], Launcher]] = {
    "local": LocalLauncher,
}
MOVERS: dict[str, Callable[[MoverConfig, Path], Mover]] = {
    "filesystem": FilesystemMover,
}


def make_launcher(config: LauncherConfig) -> Launcher:
    return _lookup(LAUNCHERS, config.kind, "launcher")(config)


def make_mover(config: MoverConfig, default_staging: Path) -> Mover:
    """`default_staging`: the staging area when the config names none (``<run_dir>/staging/<facility>``)."""
    return _lookup(MOVERS, config.kind, "mover")(config, Path(default_staging))


def _lookup(table: dict[str, T], kind: str, what: str) -> T:
    try:
        return table[kind]
    except KeyError:
        raise ConfigError(f"unknown {what} kind {kind!r}; known kinds: {', '.join(sorted(table))}") from None
