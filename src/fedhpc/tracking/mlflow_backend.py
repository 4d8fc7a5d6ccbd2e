"""MLflow: a tracking server (http://...), a local database (sqlite:///...) or a file store (file:...).

MLflow 3 keeps its file store in maintenance mode and refuses it unless
``MLFLOW_ALLOW_FILE_STORE`` is set; a `file:` URI in the experiment is taken as
that choice, so it is set for this process when the user has not set it.

The client is used directly, not `mlflow.start_run`'s process-global active run:
the server may hold other code that uses MLflow, and a resumed run is reopened by id.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedhpc.config.tracking import MlflowTracking
from fedhpc.tracking.base import Outcome, import_extra

#: MLflow's own HTTP retries (7, with doubling back-off) hold a round for minutes while a server is down;
#: fewer make a dead server fail fast, after which the run goes on without it. A user's own settings win.
_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

_STATUS = {"finished": "FINISHED", "stopped": "FAILED", "interrupted": "KILLED", "incomplete": "FAILED"}

#: MLflow's limits on one `log_batch` call
_MAX_PARAMS, _MAX_METRICS, _MAX_PARAM_LENGTH = 100, 1000, 6000


class MlflowTracker:
    name = "mlflow"

    def __init__(self, config: MlflowTracking, run_name: str):
        self.config = config
        self.run_name = config.run_name or run_name
        self._client = None
        self._run_id = ""

    def start(self, run_id: str | None) -> str:
        for key, value in _RETRIES.items():
            os.environ.setdefault(key, value)
        if self.config.tracking_uri.startswith("file:"):  # MLflow 3 refuses its file store unless told it is wanted
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import_extra("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self._client = client = MlflowClient(tracking_uri=self.config.tracking_uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            self._run_id = run_id
            return run_id
        name = self.config.experiment or self.run_name
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        self._run_id = client.create_run(experiment_id, run_name=self.run_name).info.run_id
        return self._run_id

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value[:_MAX_PARAM_LENGTH]) for key, value in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self._client.log_batch(self._run_id, params=items[i:i + _MAX_PARAMS])

    def log_metrics(self, metrics: dict[str, float], step: int, ts: float) -> None:
        from mlflow.entities import Metric

        items = [Metric(key, value, int(ts * 1000), step) for key, value in metrics.items()]
        for i in range(0, len(items), _MAX_METRICS):
            self._client.log_batch(self._run_id, metrics=items[i:i + _MAX_METRICS])

    def log_artifact(self, path: Path) -> None:
        self._client.log_artifact(self._run_id, str(path))

    def close(self, outcome: Outcome) -> None:
        if self._client is not None:
            self._client.set_terminated(self._run_id, status=_STATUS[outcome])
