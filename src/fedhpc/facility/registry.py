"""Launcher and mover kinds by name: a new backend is its module, its config class, and one line here.

The experiment file picks a backend with ``kind:``, validated at load time
against the unions `fedhpc.config.LauncherConfig` and `MoverConfig` (the one
place the kinds are listed); these tables map each kind to a factory, which
builds the backend from its own sub-config only, and every kind of the unions
has one (tests/test_facility_registry.py). The simulated kind's factory refuses:
that launcher runs the worker in-process on the virtual clock, so
`fedhpc simulate` builds it (`fedhpc.simulate.launcher`) and hands it to the
orchestrator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedhpc.clock import Clock
from fedhpc.config import (
    FacilityConfig,
    GlobusComputeLauncherConfig,
    LauncherConfig,
    LocalLauncherConfig,
    ModelConfig,
    MoverConfig,
    ParslLauncherConfig,
    SimulatedLauncherConfig,
)
from fedhpc.errors import ConfigError
from fedhpc.facility.base import Launcher, Mover
from fedhpc.facility.launchers.globus_compute import GlobusComputeLauncher
from fedhpc.facility.launchers.local import LocalLauncher
from fedhpc.facility.launchers.parsl import ParslLauncher
from fedhpc.facility.launchers.persistent import EventSink, PersistentLauncher
from fedhpc.facility.movers.filesystem import FilesystemMover
from fedhpc.facility.movers.globus_transfer import GlobusTransferMover
from fedhpc.facility.movers.proxystore import ProxyStoreMover

T = TypeVar("T")


def _local(config: LocalLauncherConfig, outlive_server: bool) -> Launcher:
    """`outlive_server` (`fedhpc run --on-interrupt keep`): the jobs are not tied to the server's life,
    so an interrupted server's jobs finish and a resume collects their updates.
    """
    return LocalLauncher(config, outlive_server=outlive_server)


def _simulated(config: SimulatedLauncherConfig, outlive_server: bool) -> Launcher:
    """A known kind that only `fedhpc simulate` can build (it needs the virtual clock)."""
    raise ConfigError(
        "launcher kind: simulated needs virtual time; run the experiment with `fedhpc simulate`, not `fedhpc run`"
    )


def _parsl(config: ParslLauncherConfig, outlive_server: bool) -> Launcher:
    """Batch jobs outlive the server whatever `outlive_server` says."""
    return ParslLauncher(config)


def _globus_compute(config: GlobusComputeLauncherConfig, outlive_server: bool) -> Launcher:
    """Remote tasks outlive the server; the Globus credentials are read at the first request, not here."""
    return GlobusComputeLauncher(config)


LAUNCHERS: dict[str, Callable[[Any, bool], Launcher]] = {
    "local": _local,
    "simulated": _simulated,
    "parsl": _parsl,
    "globus-compute": _globus_compute,
}
MOVERS: dict[str, Callable[[MoverConfig, Path], Mover]] = {
    "filesystem": FilesystemMover,
    "globus-transfer": GlobusTransferMover,
    "proxystore": ProxyStoreMover,
}


def make_launcher(config: LauncherConfig, *, outlive_server: bool = False) -> Launcher:
    """`outlive_server`: jobs keep running if the server dies (only local jobs die with it otherwise;
    batch and remote jobs always outlive it).
    """
    return _lookup(LAUNCHERS, config.kind, "launcher")(config, outlive_server)


def facility_launcher(
    facility: FacilityConfig, launcher: Launcher, mover: Mover, workers_log_dir: Path, clock: Clock,
    model: ModelConfig, events: EventSink,
) -> Launcher:
    """The launcher the rounds drive at `facility`: `launcher` itself, or, with `mode: persistent`, one that
    runs each task on a worker it keeps alive through `launcher` (`launchers/persistent.py`).

    `workers_log_dir`: where the persistent workers' job logs go; `clock`: the server's; `model`: announced
    to a new worker so it builds the base before its first task; `events`: records its workers' comings and goings.
    """
    if facility.mode != "persistent":
        return launcher
    return PersistentLauncher(
        launcher, mover, facility.persistent, facility.name, workers_log_dir, clock,
        model=model, device=facility.launcher.device, events=events,
    )


def make_mover(config: MoverConfig, default_staging: Path) -> Mover:
    """`default_staging`: the staging area when the config names none (``<run_dir>/staging/<facility>``)."""
    return _lookup(MOVERS, config.kind, "mover")(config, Path(default_staging))


def _lookup(table: dict[str, T], kind: str, what: str) -> T:
    try:
        return table[kind]
    except KeyError:
        raise ConfigError(f"unknown {what} kind {kind!r}; known kinds: {', '.join(sorted(table))}") from None
