"""Which global `fedhpc export RUN[:ROUND|best]` writes out, and what the run recorded about it.

Only the run's `model` section is validated (the model to rebuild); the rest of
the recorded experiment is read as a plain document for the model card, so a
run whose facility data has since moved can still be exported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedhpc.config import ModelConfig
from fedhpc.errors import ConfigError
from fedhpc.run.best_round import Best, recorded_best
from fedhpc.run.ledger import Ledger
from fedhpc.run.rundir import RunDir
from fedhpc.safe_yaml import load_bounded

_TARGET = re.compile(r"(?P<run>.+?)(?::(?P<which>\d+|best))?")


@dataclass(frozen=True)
class Selected:
    """A complete global of a run, with what the export needs to know about the run."""

    run_dir: RunDir
    round: int
    how: str  # "latest", "round N", or "best (KEY = SCORE)": what the model card says was picked
    model: ModelConfig
    experiment: dict[str, Any]  # the recorded experiment document (secrets redacted)
    rounds_completed: int
    best: Best | None

    @property
    def global_dir(self) -> Path:
        return self.run_dir.global_dir(self.round)


def select(target: str) -> Selected:
    """Parse RUN, RUN:N or RUN:best; `ConfigError` (key ``RUN``) naming the run and what it holds when it cannot."""
    match = _TARGET.fullmatch(target)
    if match is None:
        raise ConfigError(f"{target!r} is not RUN, RUN:ROUND or RUN:best", key="RUN")
    run_dir = RunDir(Path(match["run"]))
    if not run_dir.exists() or not run_dir.experiment_file.is_file():
        raise ConfigError(f"{run_dir.root} is not a run directory (it has no ledger.sqlite and experiment.yaml); "
                          "pass the run_dir of a `fedhpc run`", key="RUN")
    document = _read_experiment(run_dir)
    ledger = Ledger(run_dir.ledger_path)
    try:
        complete = ledger.completed_rounds()
        best = recorded_best(ledger)
    finally:
        ledger.close()
    on_disk = [r for r in complete if (run_dir.global_dir(r) / "manifest.json").is_file()]
    if not on_disk:
        raise ConfigError(f"{run_dir.root} has no complete global yet", key="RUN")
    which = match["which"]
    if which is None:
        round, how = on_disk[-1], "the latest complete round"
    elif which == "best":
        round, how = _best(run_dir, document, best, on_disk)
    else:
        round, how = int(which), f"round {which}"
        if round not in on_disk:
            state = "was pruned (checkpoint.keep_last)" if round in complete else "is not a complete round"
            raise ConfigError(f"round {round} of {run_dir.root} {state}; the globals on disk are rounds "
                              f"{_listed(on_disk)}", key="RUN")
    try:
        model = ModelConfig.model_validate(document.get("model") or {})
    except ValidationError as e:
        raise ConfigError(f"the run's recorded model section no longer validates: {e}",
                          file=str(run_dir.experiment_file), key="model") from e
    return Selected(run_dir, round, how, model, document, complete[-1], best)


def _best(run_dir: RunDir, document: dict[str, Any], best: Best | None, on_disk: list[int]) -> tuple[int, str]:
    evaluation = document.get("evaluation") or {}
    if not evaluation.get("key_metric"):
        raise ConfigError(f"RUN:best needs evaluation.key_metric in the run's experiment, and {run_dir.root} has "
                          f"none; export a round by number instead (on disk: {_listed(on_disk)})", key="RUN")
    if best is None:
        raise ConfigError(f"{run_dir.root} has no best round yet: no evaluated round has a defined "
                          f"{evaluation['key_metric']}", key="RUN")
    if best.round not in on_disk:
        raise ConfigError(f"the best round of {run_dir.root}, {best.round}, has no global on disk", key="RUN")
    return best.round, f"the best round by {best.key_metric} ({best.mode}: {best.score:.4g})"


def _read_experiment(run_dir: RunDir) -> dict[str, Any]:
    path = run_dir.experiment_file
    document = load_bounded(path.read_text(encoding="utf-8"), file=str(path))
    if not isinstance(document, dict):
        raise ConfigError("is not a mapping: not an experiment recorded by `fedhpc run`", file=str(path))
    return document


def _listed(rounds: list[int]) -> str:
    return ", ".join(str(r) for r in rounds)
