"""Weights & Biases in offline mode: the run is written under `dir`/wandb/ and uploaded later by `wandb sync`.

Each server start writes its own ``offline-run-<time>-<id>`` folder under the
same run id (`resume="allow"`); `wandb sync` files them all into that one run.
Metrics are logged against a ``round`` step metric rather than W&B's own step,
which refuses to go back: an asynchronous run's events need not arrive in round order.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from fedhpc.config.tracking import WandbTracking
from fedhpc.tracking.base import Outcome, import_extra


class WandbTracker:
    name = "wandb"

    def __init__(self, config: WandbTracking, run_dir: Path, run_name: str):
        self.config = config
        self.dir = Path(config.dir or run_dir)
        self.run_name = run_name
        self._run = None

    def start(self, run_id: str | None) -> str:
        wandb = import_extra("wandb", "wandb")
        run_id = run_id or uuid.uuid4().hex[:12]  # W&B's own ids: lowercase letters and digits
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True, save_code=False)
        self._run = run = wandb.init(
            project=self.config.project, entity=self.config.entity, mode=self.config.mode, dir=str(self.dir),
            id=run_id, resume="allow", name=self.run_name, settings=settings, reinit="create_new",
        )
        run.define_metric("round")
        run.define_metric("*", step_metric="round")
        return run_id

    def log_params(self, params: dict[str, str]) -> None:
        self._run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int, ts: float) -> None:
        self._run.log({**metrics, "round": step})

    def log_artifact(self, path: Path) -> None:
        """Copied into the run's files folder, which `wandb sync` uploads (`run.save` would only link to it)."""
        shutil.copy2(path, Path(self._run.dir) / path.name)

    def close(self, outcome: Outcome) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if outcome == "finished" else 1)
