"""The `algorithm` section: the aggregation rule, its server optimiser, and the asynchronous rules' options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedhpc.config.types import (
    MAX_COUNT,
    BatchSize,
    Duration,
    Frozen,
    KeyedValueError,
    PositiveFloat,
    PositiveInt,
    Seed,
    Steps,
    one_of,
)


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


class LrScheduleConfig(Frozen):
    """The learning-rate curve of the whole federation, in federation steps (docs/recipes.md).

    A federation step is one of `algorithm.local_steps` per round (per global version, asynchronously):
    round r covers [(r−1)·L, r·L) of rounds·L. Every job is told where on the curve it starts, so a
    facility that trains more or fewer local steps, or joins late, stays on the same curve, and the
    curve does not restart each round (which would re-warm and re-decay every round).
    """

    kind: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after the warm-up: constant, or a linear or cosine decay to min_lr_ratio × lr"
    )
    warmup_steps: int = Field(
        0, ge=0, le=MAX_COUNT, description="federation steps of linear warm-up from 0 to each facility's lr"
    )
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="linear/cosine: the decay ends at this fraction of the lr"
    )

    @property
    def active(self) -> bool:
        """Whether the learning rate ever differs from the peak (a constant curve with no warm-up does not)."""
        return self.kind != "constant" or self.warmup_steps > 0


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
    local_epochs: PositiveFloat | None = Field(
        None, description="train this many passes over the facility's data per job instead of local_steps "
        "optimizer steps; local_steps is then the most a job may take"
    )
    batch_size: BatchSize = Field(4, description="micro-batch per rank")
    grad_accum_steps: PositiveInt = Field(1, description="micro-batches per rank summed into one optimizer step")
    max_grad_norm: PositiveFloat | None = Field(
        None, description="clip the gradient's global L2 norm (over every rank's shard) to this; unset: no clipping"
    )
    lr_schedule: LrScheduleConfig = LrScheduleConfig()
    weighting: Literal["equal", "samples", "steps", "tokens"] = Field(
        "samples", description="a facility's share of the average: equal, its examples (samples), its optimizer "
        "steps, or the loss-bearing tokens it trained on"
    )
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
                    f"only applies to algorithm.name {one_of(names)}, not {self.name}; "
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
    def _recipe_consistent(self) -> AlgorithmConfig:
        """The schedule must reach its peak within the run, and FedCompass counts steps, not epochs."""
        schedule, total = self.lr_schedule, self.rounds * self.local_steps
        if schedule.warmup_steps >= total and schedule.warmup_steps > 0:
            raise KeyedValueError(
                "algorithm.lr_schedule.warmup_steps",
                f"is {schedule.warmup_steps} federation steps, not below the run's {total} (rounds {self.rounds} "
                f"× local_steps {self.local_steps}), so the learning rate would never reach its peak; lower it",
            )
        if schedule.kind == "constant" and schedule.min_lr_ratio != 0.0:
            raise KeyedValueError(
                "algorithm.lr_schedule.min_lr_ratio",
                "only applies to a decay (kind linear or cosine), not kind constant; set the kind or remove it",
            )
        if self.local_epochs is not None and self.name == "fedcompass":
            raise KeyedValueError(
                "algorithm.local_epochs",
                "does not apply to fedcompass, which assigns each job its number of local steps from the "
                "facility's measured speed; remove local_epochs (algorithm.compass bounds the steps)",
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
