"""The whole experiment: its sections, and the checks that need more than one of them.

A relative path resolves against where it was written: the file's folder, or the
current directory for a ``--set`` value (config/types.py); `run_dir` defaults to
``runs/<name>`` under the current directory.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from fedhpc.config.algorithm import AlgorithmConfig
from fedhpc.config.compression import CompressionConfig, check_compression, compression_for
from fedhpc.config.data import DataConfig
from fedhpc.config.example_privacy import ExamplePrivacyConfig, check_example_privacy
from fedhpc.config.facility import FacilityConfig
from fedhpc.config.launchers import LocalLauncherConfig, SimulatedLauncherConfig
from fedhpc.config.model import ModelConfig, quantize_refusal
from fedhpc.config.movers import FilesystemMoverConfig
from fedhpc.config.privacy import PrivacyConfig, check_privacy
from fedhpc.config.secure_aggregation import SecureAggregationConfig, check_secure_aggregation
from fedhpc.config.recipe import EffectiveRecipe, check_recipe, recipe_for
from fedhpc.config.tracking import TrackingConfig
from fedhpc.config.types import (
    MAX_COUNT,
    NAME_PATTERN,
    BatchSize,
    DType,
    ExistingPath,
    Frozen,
    KeyedValueError,
    PositiveInt,
    RelPath,
    SeqLen,
    shown,
)

#: What kind of answer a task asks for; evaluation budgets and scores answers per family.
AnswerFamily = Literal["smiles", "formula", "iupac", "number", "boolean", "text"]


class ExchangeConfig(Frozen):
    shard_size: ByteSize = Field(ByteSize(2 * 1024**3), description="split safetensors files at this size")
    stage_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the global staged for facilities; auto = model.dtype"
    )
    update_dtype: DType = "float32"
    update_form: Literal["weights", "delta"] = Field(
        "weights", description="what a facility sends: its trained tensors, or trained minus the global it started from"
    )
    compression: CompressionConfig = Field(
        CompressionConfig(), description="how a facility encodes its delta update (docs/compression.md)"
    )

    @field_validator("shard_size")
    @classmethod
    def _positive(cls, value: ByteSize) -> ByteSize:
        if value <= 0:
            raise ValueError("must be a positive size such as '2GiB' or 1048576")
        return value


#: `evaluation.key_metric`: a task name (no dots, as in the results document) or `mean`, a dot, a metric name.
KEY_METRIC = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_]+")


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
    device: Literal["cpu", "cuda", "rocm", "xpu"] = Field(
        "cpu", description="where `fedhpc eval` generates: rocm is an AMD GPU, xpu an Intel one (docs/devices.md)"
    )
    key_metric: str | None = Field(
        None,
        description="the score that picks the best round: TASK.METRIC (one task's metric in the results document, "
        "e.g. name_conversion-s2f.element_match) or mean.METRIC (its mean over every evaluated task); needs mode",
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="max: the best round has the highest key_metric; min: the lowest (e.g. for rmse)"
    )

    @field_validator("key_metric")
    @classmethod
    def _key_metric_form(cls, value: str | None) -> str | None:
        if value is not None and not KEY_METRIC.fullmatch(value):
            raise ValueError(
                f"must be TASK.METRIC or mean.METRIC (e.g. property_prediction-esol.rmse, mean.exact_match), not {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _mode_goes_with_key_metric(self) -> EvaluationConfig:
        """Required, not guessed: a metric's direction differs by metric (rmse down, accuracy up) and a wrong guess
        would silently keep the worst round."""
        if self.key_metric is not None and self.mode is None:
            raise KeyedValueError("evaluation.mode", f"is required with key_metric {self.key_metric!r}: max if a "
                                  "higher value is better, min if a lower one is")
        if self.mode is not None and self.key_metric is None:
            raise KeyedValueError("evaluation.mode", "is set but evaluation.key_metric is not; set the metric it "
                                  "applies to (TASK.METRIC or mean.METRIC)")
        return self


class CheckpointConfig(Frozen):
    keep_last: PositiveInt = Field(
        3, description="global rounds kept on disk besides round 0, the latest and the best (evaluation.key_metric)"
    )


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
    tracking: TrackingConfig = TrackingConfig()
    privacy: PrivacyConfig | None = Field(None, description="facility-level differential privacy; unset: off")
    example_privacy: ExamplePrivacyConfig | None = Field(None, description="DP-SGD in every facility; unset: off")
    secure_aggregation: SecureAggregationConfig | None = Field(
        None, description="the server learns only the sum of each round's updates; unset: off"
    )
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
    def _privacy_accountable(self) -> Experiment:
        if self.privacy is not None:
            check_privacy(self.privacy, self.algorithm, len(self.facilities))
        return self

    @model_validator(mode="after")
    def _secure_aggregation_workable(self) -> Experiment:
        if self.secure_aggregation is not None:
            names = [f.name for f in self.facilities]
            persistent = [f.name for f in self.facilities if f.mode == "persistent"]
            check_secure_aggregation(self.secure_aggregation, self.algorithm, names, self.privacy is not None,
                                     persistent)
        return self

    @model_validator(mode="after")
    def _example_privacy_workable(self) -> Experiment:
        if self.example_privacy is not None:
            check_example_privacy([self.recipe_for(f) for f in self.facilities], self.algorithm.proximal_mu)
        return self

    @model_validator(mode="after")
    def _recipes_consistent(self) -> Experiment:
        for index, facility in enumerate(self.facilities):
            check_recipe(index, facility, self.algorithm, self.model)
        return self

    @model_validator(mode="after")
    def _compression_workable(self) -> Experiment:
        for index, facility in enumerate(self.facilities):
            model = self.recipe_for(facility).model
            sharded = model.peft == "none" and facility.launcher.resources().ranks > 1 and model.full.sharding != "ddp"
            compression = compression_for(self.exchange.compression, facility.compression)
            check_compression(index, compression, facility.compression is not None, self.exchange.update_form, sharded)
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
    def _quantized_base_supported(self) -> Experiment:
        if self.model.quantize == "none":
            return self
        for index, facility in enumerate(self.facilities):
            launcher = facility.launcher
            runs_here = isinstance(launcher, (LocalLauncherConfig, SimulatedLauncherConfig))
            reason = quantize_refusal(launcher.resources().device, runs_here)
            if reason is not None:
                raise KeyedValueError(
                    "model.quantize", f"{self.model.quantize} cannot be used by facility {facility.name!r} "
                    f"(facilities.{index}): it {reason}"
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

    def recipe_for(self, facility: FacilityConfig) -> EffectiveRecipe:
        """What `facility`'s jobs train with (config/recipe.py): the one answer launches, validate and plans use."""
        return recipe_for(facility, self.algorithm, self.model, self.data, self.example_privacy)

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
