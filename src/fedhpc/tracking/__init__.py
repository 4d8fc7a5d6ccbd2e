"""Experiment tracking: the server's events also sent to MLflow, TensorBoard and W&B (offline).

`metrics.jsonl` and the report stay the run's own record; a tracker is a copy
for the tools a lab already watches, so it may fail without costing a round
(`session.py`). Each backend lives in its own module and imports its package
only when configured (the extras ``fedhpc[mlflow]``, ``[tensorboard]``, ``[wandb]``).
"""

from fedhpc.tracking.session import TrackingSession, start_tracking

__all__ = ["TrackingSession", "start_tracking"]
