"""A facility's section: its data, its launcher and mover (chosen by ``kind``), and how its worker lives.

A mapping under ``launcher`` or ``mover`` is validated with the class its kind
names, from the tables derived from `LauncherConfig` and `MoverConfig`, so an
error names ``launcher.<key>`` rather than pydantic's tagged-union path.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from fedhpc.config.launchers import (
    LAUNCHER_CONFIGS,
    LauncherConfig,
    LocalLauncherConfig,
    SimulatedLauncherConfig,
)
from fedhpc.config.movers import (
    MOVER_CONFIGS,
    FilesystemMoverConfig,
    GlobusTransferMoverConfig,
    MoverConfig,
    ProxyStoreMoverConfig,
)
from fedhpc.config.compression import CompressionConfig
from fedhpc.config.recipe import FacilityTrainConfig
from fedhpc.config.types import (
    NAME_PATTERN,
    BackendConfig,
    Duration,
    Frozen,
    base_dir,
    expand_user,
    path_exists,
    raise_at,
)


class PersistentConfig(Frozen):
    """A persistent worker (`mode: persistent`): one job holds the allocation and trains round after round."""

    heartbeat_interval: Duration = Field(5.0, description="seconds between the worker's heartbeat.json writes")
    heartbeat_timeout: Duration = Field(
        60.0, description="seconds without a changed heartbeat after which the server replaces the worker"
    )
    idle_timeout: Duration = Field(
        600.0, description="seconds the worker waits with no work before it exits, so an orphan frees its allocation"
    )
    max_restarts: int = Field(
        2, ge=0, le=1000, description="worker replacements a task may live through before it is reported failed"
    )

    @field_validator("heartbeat_timeout")
    @classmethod
    def _timeout_exceeds_interval(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and value <= interval:
            raise ValueError(
                f"heartbeat_timeout ({value:g} s) must exceed heartbeat_interval ({interval:g} s), or every "
                "heartbeat would look late; raise heartbeat_timeout (a few intervals) or lower heartbeat_interval"
            )
        return value


def _by_kind(
    owner: type[BaseModel], value: Any, handler: ValidatorFunctionWrapHandler, table: dict[str, type[BackendConfig]],
    default: str, context: dict[str, Any] | None = None,
) -> Any:
    """Validate a backend's mapping with the model its ``kind`` names (`default` when it names none)."""
    if not isinstance(value, dict):
        return handler(value)
    kind = value.get("kind", default)
    model = table.get(kind) if isinstance(kind, str) else None
    if model is None:
        expected = " or ".join(repr(name) for name in table)
        error = {"type": "literal_error", "loc": ("kind",), "input": kind, "ctx": {"expected": expected}}
        raise ValidationError.from_exception_data(owner.__name__, [error])
    return model.model_validate(value, context=context)


def _names_remote(value: Any, table: dict[str, type[BackendConfig]], default: str) -> bool:
    """Whether a launcher or mover (a mapping or a model) runs jobs where this machine's files are not seen."""
    if isinstance(value, dict):
        kind = value.get("kind", default)
        model = table.get(kind) if isinstance(kind, str) else None
        return model is not None and model.remote
    return isinstance(value, BackendConfig) and value.remote


class FacilityConfig(Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    data: Path = Field(
        description="the facility's training data; on a remote facility, an absolute path at the facility"
    )
    launcher: LauncherConfig = LocalLauncherConfig()
    mover: MoverConfig = FilesystemMoverConfig()
    mode: Literal["per-round", "persistent"] = Field(
        "per-round", description="a job per round, or one persistent worker that trains round after round"
    )
    persistent: PersistentConfig = PersistentConfig()
    gpu_memory: ByteSize | None = Field(
        None, description="memory of one GPU at the facility, e.g. '40GiB': `fedhpc validate` checks the plan fits"
    )
    max_samples: int | None = Field(
        None,
        ge=1,
        description="the most training examples this facility may claim in an update (its weight in the average); "
        "unset: its data size where the server can count it, else unbounded",
    )
    train: FacilityTrainConfig = Field(
        FacilityTrainConfig(), description="this facility's own training keys over algorithm's (docs/recipes.md)"
    )
    compression: CompressionConfig | None = Field(
        None, description="this facility's own update codec over exchange.compression (docs/compression.md)"
    )

    @field_validator("mode")
    @classmethod
    def _mode_fits_the_backends(cls, value: str, info: ValidationInfo) -> str:
        """A persistent worker is a real job watched through small inbox files the server reads every few seconds."""
        if value != "persistent":
            return value
        launcher, mover = info.data.get("launcher"), info.data.get("mover")
        if isinstance(launcher, SimulatedLauncherConfig):
            raise ValueError(
                "'persistent' needs real jobs, but launcher kind 'simulated' runs each task in the server's "
                "process; use mode: per-round with the simulated launcher"
            )
        if isinstance(mover, ProxyStoreMoverConfig):
            raise ValueError(
                "'persistent' is not available with mover kind 'proxystore': a persistent worker reads its inbox "
                "on a filesystem the server writes to; use mode: per-round, or the filesystem mover"
            )
        if isinstance(mover, GlobusTransferMoverConfig):
            raise ValueError(
                "'persistent' needs the server to read the worker's heartbeat and results files every few "
                "seconds, and mover kind 'globus-transfer' cannot (each read would be a Globus transfer); use "
                "mode: per-round with this mover, or a filesystem mover where the server sees the facility's files"
            )
        return value

    @field_validator("launcher", mode="wrap")
    @classmethod
    def _launcher_by_kind(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """Validate a mapping with its kind's model (no kind: local), so errors name ``launcher.<key>``.

        pydantic's tagged union would put the kind into the key (``launcher.simulated.seed``) and
        report an unknown kind at ``launcher`` rather than ``launcher.kind``.
        """
        return _by_kind(cls, value, handler, LAUNCHER_CONFIGS, "local", info.context)

    @field_validator("mover", mode="wrap")
    @classmethod
    def _mover_by_kind(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """As for the launcher: errors name ``mover.<key>``; no kind is the filesystem mover."""
        mover = _by_kind(cls, value, handler, MOVER_CONFIGS, "filesystem", info.context)
        if isinstance(mover, ProxyStoreMoverConfig) and isinstance(info.data.get("launcher"), SimulatedLauncherConfig):
            raise_at(cls, ("kind",), mover.kind, "the simulated launcher runs each task in the server's process, "
                      "which reads the staged files itself; use the filesystem mover with launcher kind simulated")
        return mover

    @model_validator(mode="before")
    @classmethod
    def _data_where_the_jobs_run(cls, raw: Any, info: ValidationInfo) -> Any:
        """A facility whose jobs run elsewhere names its data as they see it; the server cannot check it.

        Every other facility shares this machine's filesystem: its path is
        resolved against the experiment file and a missing directory is
        reported now rather than by the first job.
        """
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), (str, Path)):
            return raw
        try:
            data = expand_user(Path(raw["data"]))
        except ValueError as e:
            raise_at(cls, ("data",), raw["data"], str(e))
        remote = _names_remote(raw.get("launcher"), LAUNCHER_CONFIGS, "local") or _names_remote(
            raw.get("mover"), MOVER_CONFIGS, "filesystem"
        )
        if remote:
            if not data.is_absolute():
                raise_at(cls, ("data",), raw["data"], "a remote facility's data is a path at the facility: give "
                          "it as an absolute path there (the server neither resolves nor checks it)")
            return raw
        base = base_dir(raw["data"], info)  # the file's folder, or the cwd for a --set value
        if not data.is_absolute() and base is not None:
            data = base / data
        try:
            found = path_exists(data)
        except ValueError as e:
            raise_at(cls, ("data",), raw["data"], str(e))
        if not found:
            raise_at(cls, ("data",), raw["data"], f"no such file or directory: {data}")
        return {**raw, "data": data}

    @model_validator(mode="after")
    def _data_outside_staging(self) -> FacilityConfig:
        """The staging area is fedhpc's to fill and prune, so the training data must lie outside it.

        A mover whose facility-side staging directory is configured apart from ``data``
        names it with `facility_staging()` (the directory, and its key).
        """
        facility_staging = self.mover.facility_staging()
        if facility_staging is None:
            return self
        staging, key = facility_staging
        data = PurePosixPath(self.data)
        if data == staging or staging in data.parents or data in staging.parents:
            raise_at(type(self), ("mover", key), str(staging), f"the staging directory {staging} and the "
                      f"facility's data {data} overlap (one is inside the other); fedhpc fills and prunes the "
                      "staging directory, so give each its own place")
        return self

    @model_validator(mode="after")
    def _mover_reaches_the_jobs(self) -> FacilityConfig:
        """Jobs on another site's endpoint cannot open the server's run directory, the filesystem mover's default."""
        mover = self.mover
        if self.launcher.remote and isinstance(mover, FilesystemMoverConfig) and mover.staging_dir is None:
            raise_at(type(self), ("mover", "kind"), mover.kind, f"launcher kind {self.launcher.kind!r} runs jobs "
                      "on the facility's endpoint, which cannot see the server's run directory; use mover kind "
                      "'globus-transfer' or 'proxystore', or set mover.staging_dir to a directory both the server "
                      "and the facility's jobs see at that path")
        return self

    @property
    def remote(self) -> bool:
        """True when the jobs run where the server's filesystem is not visible (a `remote` launcher or mover)."""
        return self.launcher.remote or self.mover.remote
