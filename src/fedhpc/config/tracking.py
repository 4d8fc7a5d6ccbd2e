"""`tracking:`: where the server also sends its metrics (MLflow, TensorBoard, W&B offline); each is off by default.

Each backend is an optional extra (``fedhpc[mlflow]``, ``fedhpc[tensorboard]``,
``fedhpc[wandb]``). A configured backend whose package is not installed is
refused here, when the file is loaded (so by `validate` and before `run` writes
anything), with the extra to install: found out at the end of round 1 it would
cost a round's allocation, and checking costs only a package lookup.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedhpc.config.types import Frozen, KeyedValueError, RelPath

#: backend key -> (the module it imports, the extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}

#: the stores MLflow's client logs to (a database URI may name its driver: postgresql+psycopg2)
MLFLOW_SCHEMES = frozenset({"http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks"})
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*@")


class MlflowTracking(Frozen):
    tracking_uri: str = Field(
        description="an MLflow tracking server (http://host:port), a local database (sqlite:////abs/path/mlflow.db) "
        "or a file store (file:/abs/path/mlruns)",
    )
    experiment: str | None = Field(None, min_length=1, description="the MLflow experiment; default: the run's name")
    run_name: str | None = Field(None, min_length=1, description="the tracked run's name; default: the run's name")

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        """A scheme MLflow stores by; no password, as the URI is recorded in experiment.yaml, the ledger and the
        parameters."""
        scheme = value.split(":", 1)[0].split("+", 1)[0].lower() if ":" in value else ""
        if scheme not in MLFLOW_SCHEMES:
            raise ValueError(f"{value!r} is not an MLflow tracking URI: expected http(s)://host:port, "
                             "sqlite:////abs/path/mlflow.db, file:/abs/path/mlruns (or postgresql, mysql, mssql, "
                             "databricks)")
        if _USERINFO.match(value):
            raise ValueError("must not hold a user or password (it is recorded in the run directory): set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, in "
                             "the server's environment instead")
        return value


class TensorboardTracking(Frozen):
    log_dir: RelPath | None = Field(
        None, description="where the event files go; default: tensorboard/ in the run directory"
    )


class WandbTracking(Frozen):
    project: str = Field(min_length=1, description="the W&B project the run is filed under")
    mode: Literal["offline"] = Field(
        "offline", description="offline only: the run is written to disk and uploaded later with `wandb sync`"
    )
    dir: RelPath | None = Field(None, description="where wandb/ is written; default: the run directory")
    entity: str | None = Field(None, min_length=1, description="the W&B entity (team or user) `wandb sync` files it under")


class TrackingConfig(Frozen):
    mlflow: MlflowTracking | None = None
    tensorboard: TensorboardTracking | None = None
    wandb: WandbTracking | None = None

    def backends(self) -> list[str]:
        """The configured backends' keys, in a fixed order."""
        return [name for name in PACKAGES if getattr(self, name) is not None]

    @model_validator(mode="after")
    def _packages_installed(self) -> TrackingConfig:
        for name in self.backends():
            module, extra = PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise KeyedValueError(
                    f"tracking.{name}",
                    f"needs the {module} package, which is not installed: pip install 'fedhpc[{extra}]'",
                )
        return self
