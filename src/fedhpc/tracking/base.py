"""What every tracking backend does, and the one way a missing package is reported."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Literal, Protocol

from fedhpc.errors import ConfigError

#: How the run ended, as the trackers are told at `close`: `incomplete` is a server that stopped without
#: recording an end (an exception outside fedhpc's own).
Outcome = Literal["finished", "stopped", "interrupted", "incomplete"]


class Tracker(Protocol):
    """One tracked run in one backend; steps are round numbers, so a resumed run continues the same axis."""

    name: str

    def start(self, run_id: str | None) -> str:
        """Open a new tracked run (`run_id` None) or reopen `run_id`; return the id to reopen it by."""
        ...

    def log_params(self, params: dict[str, str]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int, ts: float) -> None:
        """`ts`: the event's time (seconds since the epoch, or a simulation's virtual seconds)."""
        ...

    def log_artifact(self, path: Path) -> None: ...

    def close(self, outcome: Outcome) -> None: ...


def import_extra(module: str, backend: str) -> ModuleType:
    """Import a backend's package, or say which extra installs it (the config check normally says so first)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"needs the {module} package ({e}): pip install 'fedhpc[{backend}]'", key=f"tracking.{backend}"
        ) from e
