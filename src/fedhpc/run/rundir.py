"""The run directory: where everything a run owns lives, and what survives a crash.

Layout (see docs/architecture.md):
``experiment.yaml ledger.sqlite metrics.jsonl global/rNNNN/ server_state/rNNNN/
stage/rNNNN/ updates/rNNNN/<facility>/ staging/<facility>/ logs/rNNNN/ report.html``.
Only `global/` and `server_state/` directories of rounds the ledger records as
complete count; anything newer is the debris of a killed server and is removed
before resuming.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedhpc.config import Experiment
from fedhpc.errors import RunMismatch
from fedhpc.redaction import redact

log = logging.getLogger(__name__)

# Keys a user may change between a run and its resume: extending a run is normal, and the mode applies
# only when the directory is made; a privacy budget is a stop rule, not part of the mechanism (ε stays
# accounted over every round released). (A changed secret never shows: documents compare redacted.)
RESUMABLE_CHANGES = ("algorithm.rounds", "run_dir_mode", "privacy.target_epsilon")


class RunDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def experiment_file(self) -> Path:
        return self.root / "experiment.yaml"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def global_dir(self, round: int) -> Path:
        return self.root / "global" / f"r{round:04d}"

    def server_state_dir(self, round: int) -> Path:
        """The aggregator's state (server-optimiser moments) after `round`; none for round 0."""
        return self.root / "server_state" / f"r{round:04d}"

    def stage_dir(self, round: int) -> Path:
        return self.root / "stage" / f"r{round:04d}"

    def update_dir(self, round: int, facility: str) -> Path:
        return self.root / "updates" / f"r{round:04d}" / facility

    def eval_path(self, round: int) -> Path:
        return self.root / "eval" / f"r{round:04d}.json"

    def log_dir(self, round: int) -> Path:
        return self.root / "logs" / f"r{round:04d}"

    def default_staging(self, facility: str) -> Path:
        return self.root / "staging" / facility

    def exists(self) -> bool:
        return self.ledger_path.exists()

    def create(self, experiment: Experiment) -> None:
        """Make the directory (private: 0700, unless `run_dir_mode` is umask) and record the experiment.

        A private directory keeps every file the run writes in it (ledger, metrics, report, job
        scripts that export the launcher's env) from other accounts, whatever their own modes.
        """
        private = experiment.run_dir_mode == "private"
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700 if private else 0o777, exist_ok=True)
        if private and self.root.stat().st_mode & 0o077:  # it existed already, e.g. made by hand
            try:
                os.chmod(self.root, 0o700)
            except OSError as e:
                log.warning("cannot make the run directory %s private (mode 0700): %s", self.root, e.strerror)
        self.experiment_file.write_text(yaml.safe_dump(experiment_document(experiment), sort_keys=False))

    def discard_after(self, last_complete: int) -> list[Path]:
        """Remove globals, server states and stage copies newer than `last_complete`, and half-written directories."""
        removed = []
        for parent in (self.root / "global", self.root / "server_state", self.root / "stage"):
            for path in sorted(parent.glob("r*")) if parent.exists() else []:
                if int(path.name[1:]) > last_complete:
                    shutil.rmtree(path)
                    removed.append(path)
        for partial in self.root.glob("**/.*.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
        return removed

    def prune(self, latest: int, keep_last: int, protect: Collection[int] = ()) -> None:
        """Keep round 0, the latest `keep_last` globals and those of `protect`, and the latest server state.

        `protect` holds the best round (`run/best_round.py`), which `fedhpc export RUN:best` reads however
        old it is. Stale stage copies go too. A resume needs only the latest state: the round it continues from.
        """
        keeps = (
            (self.root / "global", keep_last, True, set(protect)),
            (self.root / "server_state", 1, False, set()),
            (self.root / "stage", 1, True, set()),
        )
        for parent, keep, keep_round_0, protected in keeps:
            if not parent.exists():
                continue
            for path in parent.glob("r*"):
                round = int(path.name[1:])
                if (round != 0 or not keep_round_0) and round <= latest - keep and round not in protected:
                    shutil.rmtree(path, ignore_errors=True)


def experiment_document(experiment: Experiment) -> dict[str, Any]:
    """The experiment as the run directory records it (experiment.yaml, the ledger): secrets redacted."""
    return redact(experiment.model_dump(mode="json"))


def check_same_experiment(recorded_json: str, experiment: Experiment, run_root: Path) -> None:
    """Raise `RunMismatch` listing the keys that differ, unless only resumable keys changed.

    The recorded experiment is first re-read with today's models, so a key that a
    newer fedhpc added (recorded runs lack it) compares as its default, and
    resuming a run made by an older version works while its settings still mean
    the same. If the recorded document no longer validates, it is compared as is.
    """
    recorded = json.loads(recorded_json)
    try:
        recorded = experiment_document(Experiment.model_validate(recorded))
    except ValidationError:
        recorded = redact(recorded)  # a run recorded before redaction holds the values themselves
    differences = [
        key
        for key in _differing_keys(recorded, experiment_document(experiment))
        if key not in RESUMABLE_CHANGES
    ]
    if differences:
        raise RunMismatch(
            f"{run_root} holds a run of a different experiment (differs at: {', '.join(differences[:8])}). "
            "Use the original experiment file to resume, or set a new run_dir / name to start a new run."
        )


def _differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [k for key in keys for k in _differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [k for i, (a, b) in enumerate(zip(old, new)) for k in _differing_keys(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]
