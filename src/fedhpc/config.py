"""The experiment file: pydantic models, validated once, at load time.

Every model is frozen and forbids unknown keys, so a typo fails when the file is
loaded rather than at round 7. Relative paths in an experiment file resolve
against the directory that holds the file; `run_dir` defaults to
``runs/<name>`` under the current directory. `load_experiment` never writes
to disk: a bad file leaves no trace.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedhpc.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DType = Literal["float32", "bfloat16", "float16"]
MODEL_NAMES = ("tiny-llama", "smollm2-135m-instruct")


def _resolve_against_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


def _must_exist(value: Path) -> Path:
    if not value.exists():
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
    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class TinyLlamaConfig(Frozen):
    """A randomly initialised Llama built from a seed: identical at every facility."""

    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt = 2
    intermediate_size: PositiveInt = 128
    max_position_embeddings: PositiveInt = 1024
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyLlamaConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        return self


class ModelConfig(Frozen):
    source: str = Field(
        "tiny-llama",
        description="'tiny-llama', 'smollm2-135m-instruct', a Hugging Face model directory, or a .gguf file",
    )
    tiny: TinyLlamaConfig = TinyLlamaConfig()
    dtype: DType = "float32"
    peft: Literal["lora", "none"] = "lora"
    lora: LoraConfig = LoraConfig()
    cache_dir: RelPath | None = Field(None, description="converted-model cache; default ~/.cache/fedhpc/models")

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
        looks_like_path = value.endswith(".gguf") or value.startswith(".") or candidate.exists()
        return str(candidate) if looks_like_path else value


class DataConfig(Frozen):
    seq_len: PositiveInt = 256
    packing: bool = False


class ServerOptimizerConfig(Frozen):
    """The server optimiser of fedavgm, fedadam, fedyogi and fedadagrad (fedavg has none)."""

    lr: PositiveFloat | None = Field(
        None, description="server learning rate η; default 1.0 (fedavgm), 0.01 (fedadam, fedyogi), 0.1 (fedadagrad)"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="fedavgm: momentum β")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="fedadam/fedyogi/fedadagrad: first-moment decay")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="fedadam/fedyogi: second-moment decay")
    tau: PositiveFloat = Field(1e-3, description="adaptivity τ: the smallest denominator of a step")


class AlgorithmConfig(Frozen):
    name: Literal["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] = "fedavg"
    server: ServerOptimizerConfig = ServerOptimizerConfig()
    proximal_mu: float = Field(0.0, ge=0.0, description="FedProx μ: local loss + μ/2·‖w − w_global‖²; 0: off")
    rounds: PositiveInt = 3
    local_steps: PositiveInt = 10
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: PositiveInt = Field(4, description="micro-batch per rank")
    weighting: Literal["equal", "samples", "steps"] = "samples"
    min_facilities: PositiveInt = 1
    round_timeout: PositiveFloat = Field(3600.0, description="seconds a facility's job may run before it is cancelled")
    max_update_norm: PositiveFloat | None = Field(
        None, description="reject an update whose L2 distance from the global exceeds this"
    )
    seed: int = 0
    participation: float = Field(
        1.0, gt=0.0, le=1.0, description="fraction of facilities sampled to train each round (seeded per round)"
    )
    round_deadline: PositiveFloat | None = Field(
        None, description="seconds after which a round aggregates what has arrived, once min_facilities are accepted"
    )
    late_updates: Literal["drop", "next_round"] | None = Field(
        None, description="with round_deadline: cancel a late job (drop, the default) or apply its update next round"
    )

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
    nprocs: PositiveInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads_per_rank: PositiveInt | None = None
    env: dict[str, str] = Field(default_factory=dict)


class FilesystemMoverConfig(Frozen):
    """Copies directories through a filesystem both sides can see."""

    kind: Literal["filesystem"] = "filesystem"
    staging_dir: RelPath | None = Field(None, description="default: <run_dir>/staging/<facility>")
    hardlink: bool = Field(True, description="hard-link instead of copying when on the same filesystem")


class FacilityConfig(Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    data: ExistingPath
    launcher: LocalLauncherConfig = LocalLauncherConfig()
    mover: FilesystemMoverConfig = FilesystemMoverConfig()


class ExchangeConfig(Frozen):
    shard_size: ByteSize = Field(ByteSize(2 * 1024**3), description="split safetensors files at this size")
    stage_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the global staged for facilities; auto = model.dtype"
    )
    update_dtype: DType = "float32"

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
    split: str = "test"
    every: int = Field(0, ge=0, description="evaluate after every N rounds; 0: only the base and the final round")
    include_base: bool = Field(True, description="also evaluate round 0 (the base model) for a before/after table")
    limit_per_task: PositiveInt | None = Field(None, description="seeded sample of at most this many per task")
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt = 32
    device: Literal["cpu", "cuda"] = "cpu"


class CheckpointConfig(Frozen):
    keep_last: PositiveInt = Field(3, description="global rounds kept on disk besides round 0 and the latest")


class Experiment(Frozen):
    name: str = Field(pattern=NAME_PATTERN)
    run_dir: RelPath | None = None
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

    def resolved_run_dir(self) -> Path:
        return (self.run_dir or Path("runs") / self.name).absolute()

    def facility(self, name: str) -> FacilityConfig:
        for facility in self.facilities:
            if facility.name == name:
                return facility
        raise KeyError(name)


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read, override and validate an experiment file; raise `ConfigError` naming file and key."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the experiment file: {e.strerror}", file=file) from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", file=file) from e
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of keys such as name, model, facilities", file=file)
    for override in overrides:
        apply_override(raw, override, file=file)
    try:
        return Experiment.model_validate(raw, context={"base_dir": path.parent.absolute()})
    except ValidationError as e:
        error = ConfigError(_describe(e, file))
        error.file, error.key = file, _key_of(e.errors()[0])
        raise error from e


def apply_override(raw: dict[str, Any], override: str, *, file: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    key, sep, value_text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.path=value", file=file)
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _step_into(node, part, ".".join(parts[: depth + 1]), file)
    last = parts[-1]
    value = yaml.safe_load(value_text) if value_text else ""
    if isinstance(node, list):
        node[_list_index(node, last, key, file)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError("cannot set a sub-key of a plain value", file=file, key=key)


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


def _describe(error: ValidationError, file: str) -> str:
    lines = []
    for item in error.errors():
        key = _key_of(item) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against docs/configuration.md)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key}: {message}")
    return "invalid experiment\n  " + "\n  ".join(f"{file}: {line}" for line in lines)
