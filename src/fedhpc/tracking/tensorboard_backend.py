"""TensorBoard: scalar event files through torch's `SummaryWriter` (it needs the `tensorboard` package).

A resumed run writes a new event file in the same directory; TensorBoard reads
a directory's files as one run, and the steps (rounds) go on where they stopped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedhpc.config.tracking import TensorboardTracking
from fedhpc.tracking.base import Outcome, import_extra


class TensorboardTracker:
    name = "tensorboard"

    def __init__(self, config: TensorboardTracking, run_dir: Path):
        self.log_dir = Path(config.log_dir or run_dir / "tensorboard")
        self._writer = None

    def start(self, run_id: str | None) -> str:
        import_extra("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(run_id) if run_id is not None else self.log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir))
        self.log_dir = log_dir
        return str(log_dir)

    def log_params(self, params: dict[str, str]) -> None:
        """As one text summary (a markdown table): TensorBoard's hparams view wants metrics declared up front."""
        rows = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self._writer.add_text("config", f"| key | value |\n|---|---|\n{rows}", global_step=0)
        self._writer.flush()

    def log_metrics(self, metrics: dict[str, float], step: int, ts: float) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step, walltime=ts)
        self._writer.flush()

    def log_artifact(self, path: Path) -> None:
        """Beside the event files: TensorBoard has no artifacts, and whoever browses the folder finds it there."""
        shutil.copy2(path, self.log_dir / path.name)

    def close(self, outcome: Outcome) -> None:
        if self._writer is not None:
            self._writer.close()
