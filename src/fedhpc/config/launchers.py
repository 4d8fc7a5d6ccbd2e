"""The `launcher` section of a facility: one config class per launcher kind, and their union.

`LauncherConfig` is the one place the kinds are listed; `LAUNCHER_CONFIGS`
(kind → class, for `FacilityConfig` and the facility registry) is derived from
it. Every class states whether its jobs are `remote` and what one job occupies
(`resources()`, for the memory plan).
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import Field, field_validator, model_validator

from fedhpc.config.distributions import Distribution
from fedhpc.config.transfer import TransferConfig
from fedhpc.config.ranks import (
    BINDING_LAUNCHERS,
    Device,
    MpiConfig,
    RankedLauncherConfig,
    Resources,
    rank_launcher_errors,
)
from fedhpc.config.types import (
    BackendConfig,
    Duration,
    KeyedErrors,
    NodeCount,
    PositiveInt,
    RankCount,
    RelPath,
    Seed,
    kinds_of,
    one_of,
    raise_keyed,
)


class LocalLauncherConfig(BackendConfig):
    """Runs the worker on this machine under torchrun (gloo on CPU, nccl on GPUs)."""

    remote: ClassVar[bool] = False

    kind: Literal["local"] = "local"
    nprocs: RankCount = 1
    device: Device = "auto"
    threads_per_rank: RankCount | None = None
    env: dict[str, str] = Field(default_factory=dict)
    walltime: Duration | None = Field(
        None, description="stop a job after this many seconds, like a batch system's walltime; default: no limit"
    )

    def resources(self) -> Resources:
        """Every rank on this one machine."""
        return Resources(1, self.nprocs, self.device)


class SimulatedLauncherConfig(BackendConfig):
    """Runs the worker in the server's process; the job ends after a drawn virtual duration (`fedhpc simulate`).

    A job takes queue_wait + startup + local_steps × seconds_per_step virtual seconds, each
    part drawn per job and seeded by (seed, the job's name), so hour-long runs of heterogeneous
    facilities replay in seconds with the real orchestrator and aggregators; with `transfer`,
    plus the staged global's and its update's bytes over the link's bandwidth.
    """

    remote: ClassVar[bool] = False

    kind: Literal["simulated"] = "simulated"
    seconds_per_step: Distribution = Field(1.0, description="virtual seconds per local step, drawn once per job")
    queue_wait: Distribution = Field(0.0, description="virtual seconds a job waits in the queue before it starts")
    startup: Distribution = Field(0.0, description="virtual seconds a job takes to start and load the model")
    failure_rate: float = Field(0.0, ge=0.0, lt=1.0, description="probability that a job fails partway (seeded)")
    transfer: TransferConfig | None = Field(None, description="the facility's link; None: transfers take no time")
    seed: Seed = 0
    device: Literal["cpu"] = Field("cpu", description="the worker trains in the server's process, on its CPU")
    nprocs: Literal[1] = Field(1, description="one rank: the in-process worker")

    def resources(self) -> Resources:
        """One rank, in the server's process, on its CPU."""
        return Resources(1, self.nprocs, self.device)


ParslProvider = Literal["local", "slurm", "pbspro", "lsf"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")


def _valid_env_names(value: dict[str, str]) -> dict[str, str]:
    bad = [name for name in value if not _ENV_NAME.match(name)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))} cannot be an environment variable name (letters, digits, _)")
    return value


class ParslLauncherConfig(RankedLauncherConfig):
    """One batch job per round through a Parsl execution provider (Slurm, PBS Pro, LSF, or this machine).

    Scheduler keys apply to some providers only; a key the chosen provider has no use for is an error
    (`PARSL_PROVIDER_KEYS`). See facility/launchers/parsl.py for the job script.
    """

    remote: ClassVar[bool] = False

    kind: Literal["parsl"] = "parsl"
    provider: ParslProvider = Field(description="local, slurm, pbspro or lsf")
    partition: str | None = Field(None, description="slurm: --partition")
    account: str | None = Field(None, description="slurm: --account; pbspro: qsub -A")
    qos: str | None = Field(None, description="slurm: --qos")
    constraint: str | None = Field(None, description="slurm: --constraint")
    queue: str | None = Field(None, description="pbspro: qsub -q; lsf: #BSUB -q")
    project: str | None = Field(None, description="lsf: #BSUB -P")
    walltime: str | None = Field(
        None, description="HH:MM:SS (or seconds); default: algorithm.round_timeout, rounded up to a minute"
    )
    nodes: NodeCount = 1
    ranks_per_node: RankCount = 1
    gpus_per_rank: int = Field(0, ge=0, le=64, description="slurm: --gpus-per-node; pbspro: ngpus in the select")
    cores_per_node: PositiveInt | None = Field(None, description="slurm: --cpus-per-task; pbspro: ncpus")
    mem_per_node: PositiveInt | None = Field(None, description="slurm: --mem, in GB")
    exclusive: bool | None = Field(None, description="slurm: --exclusive (Parsl's default: true)")
    scheduler_options: list[str] = Field(
        default_factory=list, description="extra directive lines (#SBATCH ..., #PBS ..., #BSUB ...)"
    )
    worker_init: str = Field(
        "", description="shell lines run first in the job (module load ...; source venv/bin/activate)"
    )
    env: dict[str, str] = Field(default_factory=dict)
    device: Device = "auto"
    mpi: MpiConfig = MpiConfig()
    master_addr: str | None = Field(None, description="rank 0's address; default: the first node's hostname")
    status_interval: Duration = Field(5.0, description="seconds between scheduler status queries")
    script_dir: RelPath | None = Field(None, description="job scripts and logs; default: <job log dir>/parsl")

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime_format(cls, value: Any) -> Any:
        """``HH:MM:SS``, or seconds as for the local launcher (rounded up to whole minutes)."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            minutes = math.ceil(value / 60)
            return f"{minutes // 60:02d}:{minutes % 60:02d}:00"
        match = _WALLTIME.match(value) if isinstance(value, str) else None
        if value is not None and (match is None or int(match[1]) * 60 + int(match[2]) < 1):
            raise ValueError(
                f"must be HH:MM:SS of at least 00:01:00 (schedulers count minutes), or seconds; got {value!r}"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _valid_env_names(value)

    @field_validator("scheduler_options")
    @classmethod
    def _directives(cls, value: list[str]) -> list[str]:
        bad = [line for line in value if not line.startswith("#") or "\n" in line]
        if bad:
            raise ValueError(f"each entry is one directive line such as '#SBATCH --gres=gpu:4'; got {bad[0]!r}")
        return value

    @model_validator(mode="after")
    def _fits_the_provider(self) -> ParslLauncherConfig:
        """Report every mismatch at its own key (``launcher.qos``, ``launcher.mpi.launcher``), not at ``launcher``."""
        errors: KeyedErrors = []
        for key, providers in PARSL_PROVIDER_KEYS.items():
            value = getattr(self, key)
            if value != type(self).model_fields[key].get_default(call_default_factory=True) and (
                self.provider not in providers
            ):
                errors.append(((key,), f"the {self.provider} provider has no use for it (it applies to provider "
                               f"{one_of(providers)}); remove it", value))
        mpi, ranks = self.mpi, self.nprocs
        if self.provider == "local" and self.nodes > 1:
            errors.append((("nodes",), "the local provider runs the job on this machine: one node", self.nodes))
        errors += rank_launcher_errors(mpi, ranks, self.device, self.gpus_per_rank)
        if mpi.launcher == "srun" and self.provider != "slurm":
            errors.append((("mpi", "launcher"), f"srun needs a Slurm allocation, not provider {self.provider}",
                           mpi.launcher))
        if mpi.launcher == "aprun" and self.provider == "local":
            errors.append((("mpi", "launcher"), "aprun needs a Cray ALPS allocation, not provider local", mpi.launcher))
        if self.gpus_per_rank and self.device == "cpu":
            errors.append((("gpus_per_rank",), "requests GPUs but device is cpu; set device to auto, cuda, rocm or "
                           "xpu, or remove gpus_per_rank", self.gpus_per_rank))
        raise_keyed(type(self), errors)
        return self


PARSL_PROVIDER_KEYS: dict[str, tuple[str, ...]] = {
    "partition": ("slurm",),
    "account": ("slurm", "pbspro"),
    "qos": ("slurm",),
    "constraint": ("slurm",),
    "queue": ("pbspro", "lsf"),
    "project": ("lsf",),
    "walltime": ("slurm", "pbspro", "lsf"),
    "cores_per_node": ("slurm", "pbspro"),
    "mem_per_node": ("slurm",),
    "exclusive": ("slurm",),
    "gpus_per_rank": ("slurm", "pbspro"),
    "scheduler_options": ("slurm", "pbspro", "lsf"),
}
"""Which providers each scheduler key of `ParslLauncherConfig` applies to (the rest are for every provider)."""


class GlobusComputeLauncherConfig(RankedLauncherConfig):
    """One Globus Compute task per job on the facility's endpoint (facility/launchers/globus_compute.py).

    ``function: mpi`` sends an MPIFunction: the endpoint's GlobusMPIEngine starts nodes × ranks_per_node
    ranks with its own ``mpi_launcher``. ``function: shell`` sends a ShellFunction whose command starts
    the ranks with ``mpi``, the facility's own rank launcher, where the endpoint's worker runs.
    """

    remote: ClassVar[bool] = True

    kind: Literal["globus-compute"] = "globus-compute"
    endpoint_id: UUID = Field(description="the facility's Globus Compute endpoint")
    function: Literal["mpi", "shell"] = Field(
        "mpi", description="mpi: MPIFunction on a GlobusMPIEngine endpoint; shell: ShellFunction, ranks started by mpi"
    )
    nodes: NodeCount = 1
    ranks_per_node: RankCount = 1
    num_ranks: PositiveInt | None = Field(
        None, description="the MPI resource specification's total; if given, nodes × ranks_per_node"
    )
    gpus_per_rank: int = Field(
        0, ge=0, le=64, description="function shell with mpi.launcher srun: --gpus-per-task (the endpoint's "
        "batch job must hold the GPUs)"
    )
    mpi: MpiConfig = Field(
        MpiConfig(), description="function shell: the rank launcher; function mpi: only extra_args (launcher_options)"
    )
    python: str = Field(
        "python3", description="the interpreter at the facility that has fedhpc installed (after worker_init)"
    )
    worker_init: str = Field(
        "", description="shell lines run first in the task (module load ...; source venv/bin/activate)"
    )
    env: dict[str, str] = Field(default_factory=dict)
    device: Device = "auto"
    user_endpoint_config: dict[str, Any] = Field(
        default_factory=dict, description="values for the endpoint's config template: account, queue, walltime, ..."
    )
    status_interval: Duration = Field(10.0, description="seconds between task status queries")
    submit_retries: int = Field(
        3, ge=0, le=100, description="resubmissions after a transient service error or a task lost with its worker"
    )

    @field_validator("endpoint_id", mode="before")
    @classmethod
    def _endpoint_uuid(cls, value: Any) -> UUID:
        try:
            return UUID(str(value))
        except ValueError:
            raise ValueError(
                f"must be the endpoint's UUID (`globus-compute-endpoint list` at the facility shows it); got {value!r}"
            ) from None

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _valid_env_names(value)

    @field_validator("python")
    @classmethod
    def _one_word(cls, value: str) -> str:
        if not value.strip() or "\n" in value:
            raise ValueError("must name the facility's python interpreter, e.g. /home/me/venv/bin/python")
        return value

    @field_validator("user_endpoint_config")
    @classmethod
    def _json_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"is sent to the endpoint as JSON; use strings, numbers, booleans, lists and maps ({e})")
        return value

    @model_validator(mode="after")
    def _ranks_consistent(self) -> GlobusComputeLauncherConfig:
        mpi = self.mpi
        errors: KeyedErrors = []
        if self.num_ranks is not None and self.num_ranks != self.nprocs:
            errors.append((("num_ranks",), f"is {self.num_ranks}, but nodes × ranks_per_node is {self.nprocs}; "
                           "make them agree or remove num_ranks", self.num_ranks))
        if self.function == "shell":
            errors += rank_launcher_errors(mpi, self.nprocs, self.device, self.gpus_per_rank)
            if self.gpus_per_rank and mpi.launcher != "srun":
                errors.append((("gpus_per_rank",), f"only srun takes GPUs per rank, not mpi.launcher {mpi.launcher} "
                               "(the endpoint's batch job holds the node's GPUs); remove it", self.gpus_per_rank))
        else:
            engine = {("mpi", "launcher"): mpi.launcher if mpi.launcher != "none" else None,
                      **{("mpi", key): getattr(mpi, key) for key in ("flavour", *BINDING_LAUNCHERS)},
                      ("gpus_per_rank",): self.gpus_per_rank or None}  # fmt: skip
            errors += [(key, "function mpi starts the ranks with the endpoint's own mpi_launcher (GlobusMPIEngine); "
                        "remove it (its options go through mpi.extra_args, as launcher_options), or use "
                        "function: shell to start them with mpi", value)
                       for key, value in engine.items() if value is not None]  # fmt: skip
        if self.gpus_per_rank and self.device == "cpu":
            errors.append((("gpus_per_rank",), "requests GPUs but device is cpu; set device to auto, cuda, rocm or "
                           "xpu, or remove gpus_per_rank", self.gpus_per_rank))
        raise_keyed(type(self), errors)
        return self


LauncherConfig = Annotated[
    LocalLauncherConfig | SimulatedLauncherConfig | ParslLauncherConfig | GlobusComputeLauncherConfig,
    Field(discriminator="kind"),
]
LAUNCHER_CONFIGS = kinds_of(LauncherConfig)
"""Each launcher kind's config class, in the union's order (the order an unknown kind's error lists them)."""
