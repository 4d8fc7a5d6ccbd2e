"""`tracking:`: where the server also sends its metrics (MLflow, TensorBoard, W&B offline); each is off by default.

Each backend is an optional extra (``fedhpc[mlflow]``, ``fedhpc[tensorboard]``,
``fedhpc[wandb]``). A configured backend whose package is not installed is
refused here, when the file is loaded (so by `validate` and before `run` writes
anything), with the extra to install: found out at the end of round 1 it would
cost a round's allocation, and checking costs only a package lookup.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, model_validator

from fedhpc.config.types import Frozen, KeyedValueError, RelPath

#: backend key -> (the module it imports, the extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}


class MlflowTracking(Frozen):
    tracking_uri: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:",
        description="an MLflow tracking server (http://host:port), a local database (sqlite:////abs/path/mlflow.db) "
        "or a file store (file:/abs/path/mlruns)",
    )
    experiment: str | None = Field(None, min_length=1, description="the MLflow experiment; default: the run's name")
    run_name: str | None = Field(None, min_length=1, description="the tracked run's name; default: the run's name")


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
