"""The experiment file: pydantic models, validated once, at load time.

Every model is frozen and forbids unknown keys, so a typo fails when the file is
loaded rather than at round 7. Relative paths in an experiment file resolve
against the directory that holds the file; `run_dir` defaults to
``runs/<name>`` under the current directory. `load_experiment` never writes
to disk: a bad file leaves no trace.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Literal, NoReturn
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from fedhpc.errors import ConfigError
from fedhpc.safe_yaml import MAX_DEPTH, MAX_FILE_BYTES, load_bounded

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DType = Literal["float32", "bfloat16", "float16"]
#: What kind of answer a task asks for; evaluation budgets and scores answers per family.
AnswerFamily = Literal["smiles", "formula", "iupac", "number", "boolean", "text"]
MODEL_NAMES = ("tiny-llama", "smollm2-135m-instruct")

# Bounds on numbers, so a value no run could use (nprocs: 1e20, a timeout past the thread library's limit,
# an infinite learning rate) fails at load time with its key, not in a launcher or a memory plan.
MAX_COUNT = 2**31 - 1  # what C ints downstream (torch, schedulers) hold
MAX_SECONDS = 1e8  # about three years: beyond any allocation, below every timer's limit
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Duration = Annotated[float, Field(gt=0.0, le=MAX_SECONDS, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
SeqLen = Annotated[int, Field(gt=0, le=1 << 20)]  # tokens: beyond the longest context of any model trained here
ModelDim = Annotated[int, Field(gt=0, le=1 << 16)]
BatchSize = Annotated[int, Field(gt=0, le=1 << 16)]
Steps = Annotated[int, Field(gt=0, le=100_000_000)]
NodeCount = Annotated[int, Field(gt=0, le=100_000)]  # the largest machines have about 10,000 nodes
RankCount = Annotated[int, Field(gt=0, le=1024)]  # ranks (or threads) on one node


def expand_user(value: Path) -> Path:
    """``~`` and ``~user`` expanded; an unknown user is a `ValueError` (pydantic reports it at the key)."""
    try:
        return value.expanduser()
    except RuntimeError:
        raise ValueError(f"{value}: {value.parts[0]} names no user on this machine") from None


def path_exists(value: Path) -> bool:
    """`Path.exists`, but a name the OS refuses (too long, a NUL byte) is a `ValueError` saying why."""
    try:
        return value.exists()
    except OSError as e:
        raise ValueError(f"cannot use {shown(value)}: {e.strerror}") from None


def shown(value: object) -> str:
    """A path or argument for a message: whole, or its first 200 characters (a fuzzed name can be huge)."""
    text = str(value)
    return text if len(text) <= 200 else f"{text[:200]}..."


def _resolve_against_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = expand_user(value)
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


def _must_exist(value: Path) -> Path:
    if not path_exists(value):
        raise ValueError(f"no such file or directory: {value}")
    return value


RelPath = Annotated[Path, AfterValidator(_resolve_against_file)]
ExistingPath = Annotated[Path, AfterValidator(_resolve_against_file), AfterValidator(_must_exist)]


class KeyedValueError(ValueError):
    """A cross-field check's failure, carrying the dotted key it is about.

    pydantic locates a model-level validator's error at the model itself (for
    the whole experiment: no key at all); this lets the error name the key the
    user must edit, e.g. ``algorithm.min_facilities``.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraConfig(Frozen):
    r: ModelDim = 8
    alpha: PositiveFloat = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class TinyLlamaConfig(Frozen):
    """A randomly initialised Llama built from a seed: identical at every facility."""

    hidden_size: ModelDim = 64
    num_layers: ModelDim = 2
    num_heads: ModelDim = 4
    num_kv_heads: ModelDim = 2
    intermediate_size: ModelDim = 128
    max_position_embeddings: SeqLen = 1024
    seed: Seed = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyLlamaConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        return self


class FullFinetuneConfig(Frozen):
    """How a worker trains every weight (`model.peft: none`); LoRA ignores it (docs/full-finetuning.md).

    FSDP2 shards parameters, gradients and optimizer state over the job's ranks,
    so a model that does not fit one GPU with AdamW (16 bytes per parameter in
    fp32 master + moments) still trains; DDP keeps a whole copy per rank and is
    faster for models that fit.
    """

    sharding: Literal["auto", "fsdp", "ddp"] = Field(
        "auto", description="auto: FSDP on more than one rank, a single process otherwise; ddp: a copy per rank"
    )
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="forward/backward dtype (autocast on one rank); auto: bfloat16 on GPUs, float32 on CPUs"
    )
    reduce_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of FSDP's gradient reduce-scatter"
    )
    activation_checkpointing: bool = Field(
        True, description="recompute each decoder layer in the backward pass: one layer's activations, not all"
    )
    cpu_offload: bool = Field(
        False, description="FSDP keeps parameters, gradients and optimizer state in host memory between uses"
    )


class ModelConfig(Frozen):
    source: str = Field(
        "tiny-llama",
        description="'tiny-llama', 'smollm2-135m-instruct', a Hugging Face model directory, or a .gguf file",
    )
    tiny: TinyLlamaConfig = TinyLlamaConfig()
    dtype: DType = "float32"
    peft: Literal["lora", "none"] = "lora"
    lora: LoraConfig = LoraConfig()
    full: FullFinetuneConfig = FullFinetuneConfig()
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each decoder layer; auto: on GPUs only (docs/performance.md)"
    )
    cache_dir: RelPath | None = Field(
        None, description="converted-model and compiled-kernel cache; default ~/.cache/fedhpc/models"
    )
    keep_optimizer_state: bool = Field(
        False,
        description="a persistent worker keeps AdamW's moments from one task to the next (never shipped), "
        "for LoRA and full fine-tuning alike",
    )

    @field_validator("source")
    @classmethod
    def _resolve_source_path(cls, value: str, info: ValidationInfo) -> str:
        """A source that names a file or directory resolves like every other path in the file.

        A hub id (``org/name``) also has a slash, so a bare ``a/b`` counts as a path
        only when it exists next to the file; ``./a/b`` and ``x.gguf`` always do.
        """
        if value in MODEL_NAMES or Path(value).is_absolute():
            return value
        base = (info.context or {}).get("base_dir")
        if base is None:
            return value
        candidate = Path(base) / value
        looks_like_path = value.endswith(".gguf") or value.startswith(".") or path_exists(candidate)
        return str(candidate) if looks_like_path else value

    @model_validator(mode="after")
    def _full_needs_full_finetuning(self) -> ModelConfig:
        # Not fields_set: a task.json carries every key, defaults included.
        if self.full != FullFinetuneConfig() and self.peft != "none":
            raise KeyedValueError(
                "model.full", f"configures full fine-tuning, but model.peft is {self.peft!r}; set model.peft: none "
                "to train every weight, or remove model.full"
            )
        return self


class DataConfig(Frozen):
    seq_len: SeqLen = 256
    packing: bool = False


class ServerOptimizerConfig(Frozen):
    """The server optimiser of fedavgm, fedadam, fedyogi and fedadagrad, and fedbuff's step size.

    fedavg, fedasync and fedcompass have no server optimiser and ignore this section.
    """

    lr: PositiveFloat | None = Field(
        None,
        description="server learning rate η; default 1.0 (fedavgm, fedbuff), 0.01 (fedadam, fedyogi), 0.1 (fedadagrad)",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="fedavgm: momentum β")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="fedadam/fedyogi/fedadagrad: first-moment decay")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="fedadam/fedyogi: second-moment decay")
    tau: PositiveFloat = Field(1e-3, description="adaptivity τ: the smallest denominator of a step")


ASYNC_ALGORITHMS = ("fedasync", "fedbuff", "fedcompass")
# α when `algorithm.alpha` is not set. FedAsync mixes one facility's model at a time, so α < 1 keeps
# the global from jumping to it; FedCompass already scales a group by its share n/N, and α = 1 makes
# a group of every facility, all fresh, exactly FedAvg.
DEFAULT_MIXING_ALPHA = {"fedasync": 0.6, "fedcompass": 1.0}
DEFAULT_BUFFER_SIZE = 3  # FedBuff's K: a step every few updates, few enough for a handful of facilities


def _one_of(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class StalenessConfig(Frozen):
    """How much a stale update counts: s(τ), τ = global versions between its base and the current global.

    constant: 1; polynomial: (1 + τ)^−a; hinge: 1 if τ ≤ b else 1/(a·(τ − b) + 1)
    (Xie et al., 2019, "Asynchronous Federated Optimization", FedAsync).
    """

    function: Literal["constant", "polynomial", "hinge"] = "polynomial"
    a: PositiveFloat = Field(0.5, description="decay rate of polynomial and hinge")
    b: int = Field(4, ge=0, le=MAX_COUNT, description="hinge: staleness up to which an update counts fully")


class CompassConfig(Frozen):
    """FedCompass's scheduler (Li et al., ICLR 2024): local steps per facility, chosen from its measured speed."""

    min_steps: Steps | None = Field(None, description="fewest local steps assigned; default ⌈0.2·max_steps⌉")
    max_steps: Steps | None = Field(None, description="most local steps assigned; default algorithm.local_steps")
    latest_time_factor: float = Field(
        1.2, gt=1.0, description="a group waits for its members until their expected arrival × this factor"
    )
    speed_momentum: float = Field(
        0.9, gt=0.0, le=1.0, description="EMA weight of a facility's newest speed sample (1: only the newest)"
    )

    @model_validator(mode="after")
    def _steps_ordered(self) -> CompassConfig:
        if self.min_steps is not None and self.max_steps is not None and self.min_steps > self.max_steps:
            raise KeyedValueError(
                "algorithm.compass.min_steps",
                f"is {self.min_steps}, above algorithm.compass.max_steps ({self.max_steps}); "
                "lower min_steps or raise max_steps",
            )
        return self


class AlgorithmConfig(Frozen):
    name: Literal[
        "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedasync", "fedbuff", "fedcompass"
    ] = "fedavg"
    server: ServerOptimizerConfig = ServerOptimizerConfig()
    proximal_mu: float = Field(
        0.0, ge=0.0, allow_inf_nan=False, description="FedProx μ: local loss + μ/2·‖w − w_global‖²; 0: off"
    )
    rounds: Steps = 3
    local_steps: Steps = 10
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    batch_size: BatchSize = Field(4, description="micro-batch per rank")
    weighting: Literal["equal", "samples", "steps"] = "samples"
    min_facilities: PositiveInt = 1
    round_timeout: Duration = Field(3600.0, description="seconds a facility's job may run before it is cancelled")
    max_update_norm: PositiveFloat | None = Field(
        None, description="reject an update whose L2 distance from the global exceeds this"
    )
    seed: Seed = 0
    participation: float = Field(
        1.0, gt=0.0, le=1.0, description="fraction of facilities sampled to train each round (seeded per round)"
    )
    round_deadline: Duration | None = Field(
        None, description="seconds after which a round aggregates what has arrived, once min_facilities are accepted"
    )
    late_updates: Literal["drop", "next_round"] | None = Field(
        None, description="with round_deadline: cancel a late job (drop, the default) or apply its update next round"
    )
    alpha: float | None = Field(
        None, gt=0.0, le=1.0, description="fedasync/fedcompass mixing weight α; default 0.6 (fedasync), 1.0 (fedcompass)"
    )
    staleness: StalenessConfig = StalenessConfig()
    max_staleness: int = Field(
        8, ge=0, le=MAX_COUNT, description="asynchronous: reject an update more than this many global versions behind"
    )
    buffer_size: PositiveInt | None = Field(None, description="fedbuff: updates buffered per server step K; default 3")
    compass: CompassConfig = CompassConfig()

    @property
    def is_async(self) -> bool:
        return self.name in ASYNC_ALGORITHMS

    def mixing_alpha(self) -> float:
        """α of fedasync or fedcompass: the configured one, else that algorithm's default."""
        if self.name not in DEFAULT_MIXING_ALPHA:
            raise ValueError(f"{self.name} has no mixing weight α; only {' and '.join(DEFAULT_MIXING_ALPHA)} do")
        return DEFAULT_MIXING_ALPHA[self.name] if self.alpha is None else self.alpha

    def fedbuff_k(self) -> int:
        return DEFAULT_BUFFER_SIZE if self.buffer_size is None else self.buffer_size

    def compass_steps(self) -> tuple[int, int]:
        """FedCompass's (fewest, most) local steps: max defaults to local_steps, min to ⌈max / 5⌉."""
        most = self.local_steps if self.compass.max_steps is None else self.compass.max_steps
        fewest = -(-most // 5) if self.compass.min_steps is None else self.compass.min_steps
        return fewest, most

    @model_validator(mode="after")
    def _async_options_consistent(self) -> AlgorithmConfig:
        """Each option belongs to some algorithms; setting it for another would be silently ignored.

        "Set" means given a value other than its default, not merely present: the run directory records
        the whole experiment, every key spelled out, and that record must validate again on resume.
        """
        owners = {
            "alpha": ("fedasync", "fedcompass"),
            "buffer_size": ("fedbuff",),
            "compass": ("fedcompass",),
            "staleness": ASYNC_ALGORITHMS,
            "max_staleness": ASYNC_ALGORITHMS,
        }
        for key, names in owners.items():
            if getattr(self, key) != type(self).model_fields[key].default and self.name not in names:
                raise KeyedValueError(
                    f"algorithm.{key}",
                    f"only applies to algorithm.name {_one_of(names)}, not {self.name}; "
                    f"change the algorithm or remove {key}",
                )
        if not self.is_async:
            return self
        synchronous = {
            "round_deadline": self.round_deadline is not None,
            "late_updates": self.late_updates is not None,
            "participation": self.participation < 1.0,
        }
        for key, present in synchronous.items():
            if present:
                raise KeyedValueError(
                    f"algorithm.{key}",
                    f"is a synchronous-round option and does not apply to the asynchronous algorithm {self.name} "
                    "(there are no rounds to close or sample); remove it",
                )
        fewest, most = self.compass_steps()
        if fewest > most:
            raise KeyedValueError(
                "algorithm.compass.min_steps",
                f"is {fewest}, above the most local steps {most} (algorithm.compass.max_steps, "
                "by default algorithm.local_steps); lower min_steps or raise max_steps",
            )
        return self

    @model_validator(mode="after")
    def _deadline_consistent(self) -> AlgorithmConfig:
        if self.round_deadline is not None and self.round_deadline >= self.round_timeout:
            raise KeyedValueError(
                "algorithm.round_deadline",
                f"is {self.round_deadline:g} s, not below algorithm.round_timeout ({self.round_timeout:g} s), "
                "so it would never close a round early; lower it or raise round_timeout",
            )
        if self.late_updates is not None and self.round_deadline is None:
            raise KeyedValueError(
                "algorithm.late_updates",
                "only applies with algorithm.round_deadline (without one no update is late); "
                "set round_deadline or remove late_updates",
            )
        return self


class LocalLauncherConfig(Frozen):
    """Runs the worker on this machine under torchrun (gloo on CPU, nccl on GPUs)."""

    kind: Literal["local"] = "local"
    nprocs: RankCount = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads_per_rank: RankCount | None = None
    env: dict[str, str] = Field(default_factory=dict)
    walltime: Duration | None = Field(
        None, description="stop a job after this many seconds, like a batch system's walltime; default: no limit"
    )


Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class UniformDistribution(Frozen):
    """``{uniform: [low, high]}``: every value in between equally likely."""

    uniform: tuple[Seconds, Seconds]

    @model_validator(mode="after")
    def _ordered(self) -> UniformDistribution:
        low, high = self.uniform
        if low > high:
            raise ValueError(f"uniform: low ({low:g}) is above high ({high:g}); write [low, high]")
        return self


class LognormalParameters(Frozen):
    median: float = Field(gt=0.0, allow_inf_nan=False)
    sigma: float = Field(ge=0.0, allow_inf_nan=False, description="spread of log(value); 0: always the median")


class LognormalDistribution(Frozen):
    """``{lognormal: {median: m, sigma: s}}``: mostly near the median, with the long tail of real batch queues."""

    lognormal: LognormalParameters


class ExponentialDistribution(Frozen):
    """``{exponential: mean}``: memoryless, mostly short with the occasional long one."""

    exponential: float = Field(gt=0.0, allow_inf_nan=False)


DISTRIBUTIONS: dict[str, type[UniformDistribution | LognormalDistribution | ExponentialDistribution]] = {
    "uniform": UniformDistribution,
    "lognormal": LognormalDistribution,
    "exponential": ExponentialDistribution,
}
_DISTRIBUTION_FORMS = (
    "a non-negative number or exactly one of {uniform: [low, high]}, {lognormal: {median: m, sigma: s}}, "
    "{exponential: mean}"
)


def _distribution_by_form(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Pick the form by the mapping's one key, so a mistake is reported once and under the key the user wrote.

    (A plain union would report a failed attempt at every form.)
    """
    if isinstance(value, dict):
        form = DISTRIBUTIONS.get(next(iter(value))) if len(value) == 1 else None
        if form is None:
            raise ValueError(f"must be {_DISTRIBUTION_FORMS}; got the keys {', '.join(map(str, value)) or '(none)'}")
        return form.model_validate(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"must be {_DISTRIBUTION_FORMS}; got {value}")
        return float(value)
    if isinstance(value, tuple(DISTRIBUTIONS.values())):
        return handler(value)
    raise ValueError(f"must be {_DISTRIBUTION_FORMS}; got {value!r}")


Distribution = Annotated[
    float | UniformDistribution | LognormalDistribution | ExponentialDistribution, WrapValidator(_distribution_by_form)
]
"""Seconds: a constant, or a distribution each job draws its own value from."""


class SimulatedLauncherConfig(Frozen):
    """Runs the worker in the server's process; the job ends after a drawn virtual duration (`fedhpc simulate`).

    A job takes queue_wait + startup + local_steps × seconds_per_step virtual seconds, each
    part drawn per job and seeded by (seed, the job's name), so hour-long runs of heterogeneous
    facilities replay in seconds with the real orchestrator and aggregators.
    """

    kind: Literal["simulated"] = "simulated"
    seconds_per_step: Distribution = Field(1.0, description="virtual seconds per local step, drawn once per job")
    queue_wait: Distribution = Field(0.0, description="virtual seconds a job waits in the queue before it starts")
    startup: Distribution = Field(0.0, description="virtual seconds a job takes to start and load the model")
    failure_rate: float = Field(0.0, ge=0.0, lt=1.0, description="probability that a job fails partway (seeded)")
    seed: Seed = 0
    device: Literal["cpu"] = Field("cpu", description="the worker trains in the server's process, on its CPU")
    nprocs: Literal[1] = Field(1, description="one rank: the in-process worker")


ParslProvider = Literal["local", "slurm", "pbspro", "lsf"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
KeyedErrors = list[tuple[tuple[str, ...], str, Any]]
"""Errors of one launcher config, each at its own key: (location under the launcher, message, the value)."""


def _valid_env_names(value: dict[str, str]) -> dict[str, str]:
    bad = [name for name in value if not _ENV_NAME.match(name)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))} cannot be an environment variable name (letters, digits, _)")
    return value


def _rank_launcher_errors(mpi: MpiConfig, ranks: int) -> KeyedErrors:
    """What is wrong with `mpi` for a job of `ranks` ranks, whoever runs the job (parsl, globus-compute shell)."""
    errors: KeyedErrors = []
    if mpi.launcher == "none" and ranks != 1:
        errors.append((("mpi", "launcher"), f"none starts one process, but nodes × ranks_per_node is {ranks}; "
                       "choose mpiexec, srun, aprun or torchrun", mpi.launcher))
    if mpi.flavour is not None and mpi.launcher not in ("mpiexec", "torchrun"):
        errors.append((("mpi", "flavour"), f"only applies to mpi.launcher mpiexec (or torchrun, which starts "
                       f"one per node with mpiexec outside Slurm), not {mpi.launcher}", mpi.flavour))
    if mpi.extra_args and mpi.launcher == "none":
        errors.append((("mpi", "extra_args"), "mpi.launcher none has no launcher to pass them to", mpi.extra_args))
    return errors


def _raise_keyed(owner: type[BaseModel], errors: KeyedErrors) -> None:
    """Raise every error at its own key (``launcher.qos``, ``launcher.mpi.launcher``), not at ``launcher``."""
    if errors:
        raise ValidationError.from_exception_data(
            owner.__name__,
            [{"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}
             for loc, message, value in errors],
        )


class MpiConfig(Frozen):
    """How a `parsl` job starts its ranks in the allocation: the line `facility/launchers/ranks.py` writes.

    ``launcher``: ``mpiexec`` (with ``flavour`` mpich: Hydra ``-n T -ppn R``; pals: Cray PALS on HPE PBS
    systems such as Polaris and Aurora, ``-n T --ppn R``; openmpi: ``-n T --map-by ppr:R:node -x VAR``),
    ``srun`` (Slurm job step), ``aprun`` (Cray ALPS), ``torchrun`` (one ``torch.distributed.run`` per node;
    across nodes started by srun under Slurm, by mpiexec elsewhere) or ``none`` (the worker as is, one process).
    """

    launcher: Literal["mpiexec", "srun", "aprun", "torchrun", "none"] = "none"
    flavour: Literal["mpich", "pals", "openmpi"] | None = Field(
        None, description="mpiexec's command-line dialect; default mpich"
    )
    extra_args: list[str] = Field(
        default_factory=list, description="added to the launcher's line before the program, e.g. [--cpu-bind, depth]"
    )


class ParslLauncherConfig(Frozen):
    """One batch job per round through a Parsl execution provider (Slurm, PBS Pro, LSF, or this machine).

    Scheduler keys apply to some providers only; a key the chosen provider has no use for is an error
    (`PARSL_PROVIDER_KEYS`). See facility/launchers/parsl.py for the job script.
    """

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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mpi: MpiConfig = MpiConfig()
    master_addr: str | None = Field(None, description="rank 0's address; default: the first node's hostname")
    status_interval: Duration = Field(5.0, description="seconds between scheduler status queries")
    script_dir: RelPath | None = Field(None, description="job scripts and logs; default: <job log dir>/parsl")

    @property
    def nprocs(self) -> int:
        """Ranks per job."""
        return self.nodes * self.ranks_per_node

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
                               f"{_one_of(providers)}); remove it", value))
        mpi, ranks = self.mpi, self.nprocs
        if self.provider == "local" and self.nodes > 1:
            errors.append((("nodes",), "the local provider runs the job on this machine: one node", self.nodes))
        errors += _rank_launcher_errors(mpi, ranks)
        if mpi.launcher == "srun" and self.provider != "slurm":
            errors.append((("mpi", "launcher"), f"srun needs a Slurm allocation, not provider {self.provider}",
                           mpi.launcher))
        if mpi.launcher == "aprun" and self.provider == "local":
            errors.append((("mpi", "launcher"), "aprun needs a Cray ALPS allocation, not provider local", mpi.launcher))
        if self.gpus_per_rank and self.device == "cpu":
            errors.append((("gpus_per_rank",), "requests GPUs but device is cpu; set device to cuda or auto, "
                           "or remove gpus_per_rank", self.gpus_per_rank))
        _raise_keyed(type(self), errors)
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


class GlobusComputeLauncherConfig(Frozen):
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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    user_endpoint_config: dict[str, Any] = Field(
        default_factory=dict, description="values for the endpoint's config template: account, queue, walltime, ..."
    )
    status_interval: Duration = Field(10.0, description="seconds between task status queries")
    submit_retries: int = Field(
        3, ge=0, le=100, description="resubmissions after a transient service error or a task lost with its worker"
    )

    @property
    def nprocs(self) -> int:
        """Ranks per job."""
        return self.nodes * self.ranks_per_node

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
            errors += _rank_launcher_errors(mpi, self.nprocs)
        elif mpi.launcher != "none" or mpi.flavour is not None:
            key, value = ("launcher", mpi.launcher) if mpi.launcher != "none" else ("flavour", mpi.flavour)
            errors.append((("mpi", key), "function mpi starts the ranks with the endpoint's own mpi_launcher "
                           "(GlobusMPIEngine); remove it, or use function: shell to start them with it", value))
        _raise_keyed(type(self), errors)
        return self


LAUNCHER_CONFIGS: dict[
    str, type[LocalLauncherConfig | SimulatedLauncherConfig | ParslLauncherConfig | GlobusComputeLauncherConfig]
] = {
    "local": LocalLauncherConfig,
    "simulated": SimulatedLauncherConfig,
    "parsl": ParslLauncherConfig,
    "globus-compute": GlobusComputeLauncherConfig,
}


class FilesystemMoverConfig(Frozen):
    """Copies directories through a filesystem both sides can see."""

    kind: Literal["filesystem"] = "filesystem"
    staging_dir: RelPath | None = Field(None, description="default: <run_dir>/staging/<facility>")
    hardlink: bool = Field(
        False,
        description="hard-link instead of copying when on the same filesystem: only for a facility trusted with the "
        "server's files, since a linked file is one file in both areas and the facility could rewrite it",
    )


_COLLECTION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _collection_id(value: str) -> str:
    """A Globus collection UUID, lower-cased as the Transfer API writes it back."""
    normalised = value.strip().lower()
    if not _COLLECTION_ID.match(normalised):
        raise ValueError(
            "must be a Globus collection UUID (8-4-4-4-12 hex digits, as app.globus.org shows it among the "
            f"collection's details); got {value!r}"
        )
    return normalised


def _absolute_posix(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"must be an absolute path without '..', such as /scratch/project/fedhpc; got {value!r}")
    return str(path)


CollectionId = Annotated[str, AfterValidator(_collection_id)]
PosixAbsolute = Annotated[str, AfterValidator(_absolute_posix)]


class GlobusTransferMoverConfig(Frozen):
    """Moves directories with Globus Transfer between a collection on the server and the facility's collection.

    Each end's directory has two names: the collection's (what Globus transfers) and the filesystem's (what
    the server writes, what the facility's jobs read). They differ when a collection is rooted below its
    filesystem's root (a Globus Connect Server storage gateway on /lus/project) or a path starts at the
    collection's home (``/~/``). See facility/movers/globus_transfer.py.
    """

    remote: ClassVar[bool] = True

    kind: Literal["globus-transfer"] = "globus-transfer"
    facility_collection: CollectionId = Field(description="the facility's Globus collection (UUID)")
    facility_path: PosixAbsolute = Field(description="the facility's staging directory, as its collection names it")
    facility_dir: PosixAbsolute | None = Field(
        None, description="the same directory as the facility's jobs see it on their filesystem; default facility_path"
    )
    server_collection: CollectionId = Field(
        description="the server's collection (UUID): Globus Connect Server, or Globus Connect Personal on this machine"
    )
    server_dir: RelPath = Field(description="a directory on this machine that server_collection serves")
    server_path: PosixAbsolute | None = Field(
        None, description="server_dir as server_collection names it; default server_dir"
    )
    facility_data_access: bool = Field(
        False, description="facility_collection is a mapped Globus Connect Server v5 collection: needs data_access"
    )
    server_data_access: bool = Field(
        False, description="server_collection is a mapped Globus Connect Server v5 collection: needs data_access"
    )
    sync_level: Literal["exists", "size", "mtime", "checksum"] = Field(
        "checksum", description="what a retried transfer skips: files already at the destination equal by this measure"
    )
    verify_checksum: bool = Field(True, description="Globus checksums each file after copying and retries a mismatch")
    deadline: Duration = Field(3600.0, description="seconds one transfer may take before it is cancelled")
    poll_interval: Duration = Field(2.0, description="seconds before the first status query; doubles up to 60 s")

    @property
    def facility_root(self) -> str:
        """The staging directory as the facility's jobs see it."""
        return self.facility_dir or self.facility_path

    @property
    def server_root(self) -> str:
        """`server_dir` as `server_collection` names it."""
        return self.server_path or str(self.server_dir)

    def facility_staging(self) -> tuple[PurePosixPath, str]:
        """The staging directory as the facility's jobs see it, and the key that sets it (for `FacilityConfig`)."""
        return PurePosixPath(self.facility_root), "facility_dir" if self.facility_dir else "facility_path"

    @model_validator(mode="after")
    def _paths_derivable(self) -> GlobusTransferMoverConfig:
        """Defaults that would name a path no one can resolve are errors at the key to set instead."""
        if "~" in PurePosixPath(self.facility_root).parts:
            _raise_at(type(self), ("facility_dir",), self.facility_dir, f"{self.facility_root} goes through the "
                      "collection's home (~), which the jobs' filesystem does not know; set facility_dir to the "
                      "staging directory's absolute path at the facility")
        if self.server_path is None and not self.server_dir.is_absolute():
            _raise_at(type(self), ("server_dir",), str(self.server_dir), "must be absolute when server_path is "
                      "not set (it is also the collection's name for the directory)")
        if self.poll_interval >= self.deadline:
            _raise_at(type(self), ("poll_interval",), self.poll_interval, f"is {self.poll_interval:g} s, not below "
                      f"deadline ({self.deadline:g} s): no transfer would be looked at before it is cancelled")
        return self


class RedisStoreConfig(Frozen):
    """A Redis server that the server and the facility's jobs both reach at this address."""

    host: str = Field(min_length=1)
    port: int = Field(6379, ge=1, le=65535)


class FileStoreConfig(Frozen):
    """A directory that the server and the facility's jobs both see at this path (ProxyStore's FileConnector)."""

    store_dir: RelPath


class GlobusStoreEndpoint(Frozen):
    """One collection of ProxyStore's GlobusConnector: its store directory as the collection and the hosts name it."""

    endpoint_path: str = Field(description="the store directory as the collection names it (absolute)")
    local_path: str = Field(description="the same directory as processes on the matching hosts open it (absolute)")
    host_regex: str = Field(description="hostnames (full match) on which this collection is the local one")

    @field_validator("endpoint_path", "local_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith(("/", "~")):
            raise ValueError(f"must be an absolute path, not {value!r}")
        return value

    @field_validator("host_regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"is not a regular expression: {e}") from None
        return value


class GlobusStoreConfig(Frozen):
    """ProxyStore's GlobusConnector: a directory per collection, kept in sync by Globus transfers."""

    endpoints: dict[UUID, GlobusStoreEndpoint] = Field(
        min_length=2, description="collection UUID → its store directory; the server's and the facility's"
    )
    timeout: PositiveInt = Field(600, description="seconds to wait for one Globus transfer")
    polling_interval: PositiveInt = Field(1, description="seconds between looks at a transfer in flight")


PROXYSTORE_MAX_CHUNK = 512 * 1024**2  # Redis refuses larger values (proto-max-bulk-len)


class ProxyStoreMoverConfig(Frozen):
    """Moves directories as objects through a ProxyStore connector: a Redis server, a shared directory, or Globus.

    The facility's jobs fetch what they read from the store and publish what they write to it
    (``fedhpc worker --store``), so the server and the facility need no filesystem in common.
    """

    kind: Literal["proxystore"] = "proxystore"
    remote: ClassVar[bool] = True
    connector: Literal["redis", "file", "globus"] = Field(description="redis, file or globus")
    redis: RedisStoreConfig | None = Field(None, description="connector redis: {host, port}")
    file: FileStoreConfig | None = Field(None, description="connector file: {store_dir}")
    globus: GlobusStoreConfig | None = Field(
        None, description="connector globus: {endpoints, timeout, polling_interval}"
    )
    facility_dir: Path = Field(description="absolute path at the facility where its jobs unpack what they fetch")
    chunk_size: ByteSize = Field(
        ByteSize(64 * 1024**2), description="files travel as objects of at most this size (at most 512MiB)"
    )

    def facility_staging(self) -> tuple[PurePosixPath, str]:
        """Where the facility's jobs unpack what they fetch, and its key (for `FacilityConfig`'s overlap check)."""
        return PurePosixPath(self.facility_dir), "facility_dir"

    @field_validator("facility_dir")
    @classmethod
    def _facility_path(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"is a path at the facility: give it as an absolute path there, not {str(value)!r}")
        return value

    @field_validator("chunk_size")
    @classmethod
    def _chunk_fits(cls, value: ByteSize) -> ByteSize:
        if not 0 < value <= PROXYSTORE_MAX_CHUNK:
            raise ValueError("must be a positive size of at most 512MiB (Redis's largest value), such as '64MiB'")
        return value

    @model_validator(mode="after")
    def _one_connector_section(self) -> ProxyStoreMoverConfig:
        """The chosen connector's section is required; another connector's would be silently ignored."""
        errors: KeyedErrors = []
        for name in ("redis", "file", "globus"):
            given = getattr(self, name) is not None
            if name == self.connector and not given:
                example = {"redis": "{host: ..., port: 6379}", "file": "{store_dir: ...}",
                           "globus": "{endpoints: {UUID: {endpoint_path, local_path, host_regex}, ...}}"}[name]
                errors.append(((name,), f"connector {name} needs its settings: {name}: {example}", None))
            elif name != self.connector and given:
                errors.append(((name,), f"only applies with connector {name}, not {self.connector}; remove it",
                               getattr(self, name)))
        _raise_keyed(type(self), errors)
        return self


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
    owner: type[BaseModel], value: Any, handler: ValidatorFunctionWrapHandler, table: dict[str, type[Frozen]],
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


def _names_remote(value: Any, table: dict[str, type[Frozen]], default: str) -> bool:
    """Whether a launcher or mover (a mapping or a model) runs jobs where this machine's files are not seen."""
    if isinstance(value, dict):
        kind = value.get("kind", default)
        return bool(getattr(table.get(kind) if isinstance(kind, str) else None, "remote", False))
    return bool(getattr(value, "remote", False))


def _raise_at(owner: type[BaseModel], loc: tuple[str, ...], value: Any, message: str) -> NoReturn:
    error = {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}
    raise ValidationError.from_exception_data(owner.__name__, [error])


# One entry per mover kind; FacilityConfig.mover validates a mapping with its kind's model.
MOVER_CONFIGS: dict[str, type[Frozen]] = {
    "filesystem": FilesystemMoverConfig,
    "globus-transfer": GlobusTransferMoverConfig,
    "proxystore": ProxyStoreMoverConfig,
}


class FacilityConfig(Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    data: Path = Field(
        description="the facility's training data; on a remote facility, an absolute path at the facility"
    )
    launcher: Annotated[
        LocalLauncherConfig | SimulatedLauncherConfig | ParslLauncherConfig | GlobusComputeLauncherConfig,
        Field(discriminator="kind"),
    ] = (
        LocalLauncherConfig()
    )
    mover: Annotated[
        FilesystemMoverConfig | GlobusTransferMoverConfig | ProxyStoreMoverConfig, Field(discriminator="kind")
    ] = (
        FilesystemMoverConfig()
    )
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
            _raise_at(cls, ("kind",), mover.kind, "the simulated launcher runs each task in the server's process, "
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
            _raise_at(cls, ("data",), raw["data"], str(e))
        remote = _names_remote(raw.get("launcher"), LAUNCHER_CONFIGS, "local") or _names_remote(
            raw.get("mover"), MOVER_CONFIGS, "filesystem"
        )
        if remote:
            if not data.is_absolute():
                _raise_at(cls, ("data",), raw["data"], "a remote facility's data is a path at the facility: give "
                          "it as an absolute path there (the server neither resolves nor checks it)")
            return raw
        base = (info.context or {}).get("base_dir")
        if not data.is_absolute() and base is not None:
            data = Path(base) / data
        try:
            found = path_exists(data)
        except ValueError as e:
            _raise_at(cls, ("data",), raw["data"], str(e))
        if not found:
            _raise_at(cls, ("data",), raw["data"], f"no such file or directory: {data}")
        return {**raw, "data": data}

    @model_validator(mode="after")
    def _data_outside_staging(self) -> FacilityConfig:
        """The staging area is fedhpc's to fill and prune, so the training data must lie outside it.

        A mover whose facility-side staging directory is configured apart from ``data``
        names it with `facility_staging()` (the directory, and its key).
        """
        facility_staging = getattr(self.mover, "facility_staging", None)
        if facility_staging is None:
            return self
        staging, key = facility_staging()
        data = PurePosixPath(self.data)
        if data == staging or staging in data.parents or data in staging.parents:
            _raise_at(type(self), ("mover", key), str(staging), f"the staging directory {staging} and the "
                      f"facility's data {data} overlap (one is inside the other); fedhpc fills and prunes the "
                      "staging directory, so give each its own place")
        return self

    @model_validator(mode="after")
    def _mover_reaches_the_jobs(self) -> FacilityConfig:
        """Jobs on another site's endpoint cannot open the server's run directory, the filesystem mover's default."""
        mover = self.mover
        if getattr(self.launcher, "remote", False) and isinstance(mover, FilesystemMoverConfig) and (
            mover.staging_dir is None
        ):
            _raise_at(type(self), ("mover", "kind"), mover.kind, f"launcher kind {self.launcher.kind!r} runs jobs "
                      "on the facility's endpoint, which cannot see the server's run directory; use mover kind "
                      "'globus-transfer' or 'proxystore', or set mover.staging_dir to a directory both the server "
                      "and the facility's jobs see at that path")
        return self

    @property
    def remote(self) -> bool:
        """True when the jobs run where the server's filesystem is not visible (a `remote` launcher or mover)."""
        return bool(getattr(self.launcher, "remote", False) or getattr(self.mover, "remote", False))


class ExchangeConfig(Frozen):
    shard_size: ByteSize = Field(ByteSize(2 * 1024**3), description="split safetensors files at this size")
    stage_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the global staged for facilities; auto = model.dtype"
    )
    update_dtype: DType = "float32"
    update_form: Literal["weights", "delta"] = Field(
        "weights", description="what a facility sends: its trained tensors, or trained minus the global it started from"
    )

    @field_validator("shard_size")
    @classmethod
    def _positive(cls, value: ByteSize) -> ByteSize:
        if value <= 0:
            raise ValueError("must be a positive size such as '2GiB' or 1048576")
        return value


class EvaluationConfig(Frozen):
    """Server-side evaluation of globals on a held-out split (run as `fedhpc eval` subprocesses)."""

    kind: Literal["chem"] = "chem"
    data: ExistingPath = Field(description="a dataset directory with a test split (SMolInstruct layout)")
    split: Literal["test", "test_subset", "dev", "validation", "train"] = Field(
        "test", description="the split scored: the release's names (test_subset: at most 200 questions a task)"
    )
    every: int = Field(
        0, ge=0, le=MAX_COUNT, description="evaluate after every N rounds; 0: only the base and the final round"
    )
    include_base: bool = Field(True, description="also evaluate round 0 (the base model) for a before/after table")
    limit_per_task: PositiveInt | None = Field(None, description="seeded sample of at most this many per task")
    batch_size: BatchSize = 16
    num_beams: Annotated[int, Field(gt=0, le=1024)] = Field(
        1, description="beam width of generation; 1 is greedy decoding"
    )
    max_new_tokens: SeqLen | dict[AnswerFamily, SeqLen] | None = Field(
        None,
        description="generation budget: one number for every task, or per answer family (smiles, formula, iupac, "
        "number, boolean, text) over the defaults in fedhpc.evaluation.decoding",
    )
    lenient: bool = Field(False, description="tolerant answer extraction instead of LlaSMol's strict one")
    device: Literal["cpu", "cuda"] = "cpu"


class CheckpointConfig(Frozen):
    keep_last: PositiveInt = Field(3, description="global rounds kept on disk besides round 0 and the latest")


class Experiment(Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    run_dir: RelPath | None = None
    run_dir_mode: Literal["private", "umask"] = Field(
        "private", description="private: the run directory is made 0700 (its ledger, report and job scripts "
        "hold the launchers' env); umask: made as the umask says, for a group that shares runs"
    )
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    exchange: ExchangeConfig = ExchangeConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    evaluation: EvaluationConfig | None = None
    facilities: list[FacilityConfig] = Field(min_length=1)

    @field_validator("facilities")
    @classmethod
    def _unique_names(cls, facilities: list[FacilityConfig]) -> list[FacilityConfig]:
        seen: set[str] = set()
        for index, facility in enumerate(facilities):
            if facility.name in seen:
                raise KeyedValueError(f"facilities.{index}.name", f"facility name {facility.name!r} appears twice")
            seen.add(facility.name)
        return facilities

    @model_validator(mode="after")
    def _quorum_possible(self) -> Experiment:
        if self.algorithm.min_facilities > len(self.facilities):
            raise KeyedValueError(
                "algorithm.min_facilities",
                f"is {self.algorithm.min_facilities} but only {len(self.facilities)} facilities are configured; "
                "lower it or add facilities"
            )
        return self

    @model_validator(mode="after")
    def _kept_optimizer_state_needs_a_persistent_worker(self) -> Experiment:
        if self.model.keep_optimizer_state and all(f.mode != "persistent" for f in self.facilities):
            raise KeyedValueError(
                "model.keep_optimizer_state",
                "keeps AdamW's moments in a persistent worker between tasks, but no facility has mode: persistent "
                "(a per-round job starts a fresh process); set a facility's mode to persistent or remove the key",
            )
        return self

    @model_validator(mode="after")
    def _run_dir_usable(self) -> Experiment:
        """The run directory can be made, and neither it nor a staging area lies in a facility's data.

        fedhpc fills and prunes both, so a file or device there (``run_dir: /dev/null``) would fail at the
        first write, and data beneath either would be pruned or read back mixed with the run's own files.
        """
        run_dir = self.resolved_run_dir()
        try:
            blocker = _existing_non_directory(run_dir)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise KeyedValueError("run_dir", f"cannot use {shown(run_dir)}: {reason}") from None
        if blocker is not None:
            raise KeyedValueError("run_dir", f"{run_dir} cannot be made a directory: {blocker} exists and is not "
                                  "a directory; choose another run_dir")
        for index, facility in enumerate(self.facilities):
            data = Path(facility.data)
            if not facility.remote and _within(run_dir, data):
                raise KeyedValueError("run_dir", f"{run_dir} is inside facility {facility.name}'s data {data}; "
                                      "put the run directory elsewhere")
            mover = facility.mover
            if isinstance(mover, FilesystemMoverConfig):
                staging = mover.staging_dir or run_dir / "staging" / facility.name
                key = f"facilities.{index}.mover.staging_dir" if mover.staging_dir else "run_dir"
                if _within(staging, data) or _within(data, staging):
                    raise KeyedValueError(key, f"facility {facility.name}'s staging directory {staging} and its "
                                          f"data {data} overlap (one is inside the other); fedhpc fills and prunes "
                                          "the staging directory, so give each its own place")
        return self

    def resolved_run_dir(self) -> Path:
        return (self.run_dir or Path("runs") / self.name).absolute()

    def facility(self, name: str) -> FacilityConfig:
        for facility in self.facilities:
            if facility.name == name:
                return facility
        raise KeyError(name)


def _existing_non_directory(path: Path) -> Path | None:
    """The first of `path` and its parents that exists, if it is not a directory (so `mkdir -p` would fail).

    A name the OS refuses to look up (too long, a loop of links) raises its `OSError`.
    """
    for candidate in (path, *path.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        return None if stat.S_ISDIR(mode) else candidate
    return None


def _within(inner: Path, outer: Path) -> bool:
    """Whether `inner` is `outer` or lies beneath it, symbolic links followed where they exist."""
    try:
        inner_real, outer_real = Path(os.path.realpath(inner)), Path(os.path.realpath(outer))
    except ValueError:  # a NUL byte: no such file exists, so the names alone decide
        inner_real, outer_real = inner, outer
    return any(a == b or b in a.parents for a, b in ((inner, outer), (inner_real, outer_real)))


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read, override and validate an experiment file; raise `ConfigError` naming file (or --set) and key."""
    path = Path(path)
    file = str(path)
    raw = load_bounded(_read_experiment_text(path), file=file)
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of keys such as name, model, facilities", file=file)
    set_by: dict[str, str] = {}
    for override in overrides:
        set_by[apply_override(raw, override, file=file)] = override
    try:
        return Experiment.model_validate(raw, context={"base_dir": path.parent.absolute()})
    except ValidationError as e:
        error = ConfigError(_describe(e, file, set_by))
        key = _key_of(e.errors()[0])
        error.file, error.key = _source_of(key, file, set_by), key
        raise error from e


def _read_experiment_text(path: Path) -> str:
    """The file as UTF-8 text, at most `MAX_FILE_BYTES`; a FIFO or device is refused, never waited on."""
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise ConfigError(f"cannot read the experiment file: {reason}", file=file) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("is not a regular file; give the experiment's YAML file", file=file)
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"cannot read the experiment file: {e.strerror}", file=file) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"is larger than {MAX_FILE_BYTES // 1024} KiB; an experiment file is a few KiB of YAML",
                          file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        begins, ends = data.rfind(b"\n", 0, e.start) + 1, data.find(b"\n", e.start)
        text = data[begins : ends if ends >= 0 else len(data)].decode("utf-8", "replace")[:80]
        raise ConfigError(f"is not UTF-8 text: byte {e.start} (line {line}, in {text!r}) is "
                          f"{data[e.start:e.start + 1]!r}; save the file as UTF-8", file=file) from None


def apply_override(raw: dict[str, Any], override: str, *, file: str) -> str:
    """Apply one ``dotted.key=value`` override in place (the value parsed as YAML); return its key.

    Errors name the ``--set`` argument rather than `file`: that is what the user must correct.
    """
    source = shown(f"--set {override}")
    key, sep, value_text = override.partition("=")
    if not sep or not key:
        raise ConfigError("must look like key.path=value", file=source)
    parts = key.split(".")
    if len(parts) > MAX_DEPTH:  # each part nests a mapping: as deep as a file may nest, no deeper
        raise ConfigError(f"the key has {len(parts)} parts, more than {MAX_DEPTH}", file=source)
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _step_into(node, part, ".".join(parts[: depth + 1]), source)
    last = parts[-1]
    value = load_bounded(value_text, file=source, key=key) if value_text else ""
    if isinstance(node, list):
        node[_list_index(node, last, key, source)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError("cannot set a sub-key of a plain value", file=source, key=key)
    return key


def _step_into(node: Any, part: str, key: str, file: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, key, file)]
    if not isinstance(node, dict):
        raise ConfigError("cannot set a sub-key of a plain value", file=file, key=key)
    if node.get(part) is None:  # absent, or an empty section (`model:` with nothing under it)
        node[part] = {}
    return node[part]


def _list_index(node: list[Any], part: str, key: str, file: str) -> int:
    if not re.fullmatch(r"\d+", part) or int(part) >= len(node):
        raise ConfigError(f"expected a list index below {len(node)}", file=file, key=key)
    return int(part)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-after"))


def _key_of(item: Any) -> str:
    keyed = item.get("ctx", {}).get("error")
    return keyed.key if isinstance(keyed, KeyedValueError) else _dotted(item["loc"])


def _source_of(key: str, file: str, set_by: dict[str, str]) -> str:
    """The ``--set`` argument that wrote `key`, a key above it or one below it, else the file."""
    for written, override in set_by.items():
        if key == written or key.startswith(f"{written}.") or (key and written.startswith(f"{key}.")):
            return shown(f"--set {override}")
    return file


def _describe(error: ValidationError, file: str, set_by: dict[str, str]) -> str:
    lines = []
    for item in error.errors():
        key = _key_of(item)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against docs/configuration.md)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{_source_of(key, file, set_by)}: {key or '(top level)'}: {message}")
    return "invalid experiment\n  " + "\n  ".join(lines)
