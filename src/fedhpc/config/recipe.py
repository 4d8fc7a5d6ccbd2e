"""A facility's training recipe: `facilities[i].train` over what `algorithm`, `data` and `model` set for all.

Machines differ: an 80 GB A100 holds a micro-batch that a 40 GB one does not,
a slow facility may train fewer steps, and a longer context may only fit with
activation checkpointing. Each facility may therefore override the keys of its
job's recipe; everything else is inherited. `recipe_for` is the one place that
combines them: the task the server writes (`run/launches.py`), the update's
intake bounds (`run/intake.py`), `fedhpc validate` and the memory plan all ask
it, so they cannot disagree (docs/recipes.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from fedhpc.config.algorithm import AlgorithmConfig
from fedhpc.config.data import DataConfig
from fedhpc.config.example_privacy import ExamplePrivacyConfig
from fedhpc.config.model import ModelConfig
from fedhpc.config.types import BatchSize, Frozen, KeyedValueError, PositiveFloat, PositiveInt, SeqLen, Steps

if TYPE_CHECKING:  # facility.py holds a FacilityTrainConfig
    from fedhpc.config.facility import FacilityConfig


class FacilityTrainConfig(Frozen):
    """`facilities[i].train`: the facility's own values of the training keys; each one unset is inherited."""

    batch_size: BatchSize | None = Field(None, description="micro-batch per rank; default algorithm.batch_size")
    grad_accum_steps: PositiveInt | None = Field(
        None, description="micro-batches per optimizer step; default algorithm.grad_accum_steps"
    )
    local_steps: Steps | None = Field(
        None, description="optimizer steps per job (alone: the facility trains steps, not epochs); with "
        "local_epochs, the most a job may take; default algorithm.local_steps"
    )
    local_epochs: PositiveFloat | None = Field(
        None, description="passes over the facility's data per job; default algorithm.local_epochs "
        "unless this facility sets local_steps alone"
    )
    lr: PositiveFloat | None = Field(None, description="this facility's peak learning rate; default algorithm.lr")
    seq_len: SeqLen | None = Field(None, description="tokens per training sequence; default data.seq_len")
    activation_checkpointing: bool | None = Field(
        None, description="full fine-tuning only: recompute each layer in the backward pass; "
        "default model.full.activation_checkpointing"
    )

    def given(self) -> list[str]:
        """The keys this facility sets, in the order above."""
        return [key for key in type(self).model_fields if getattr(self, key) is not None]


@dataclass(frozen=True)
class EffectiveRecipe:
    """What one facility's jobs train with: its overrides applied to the experiment's sections.

    `local_steps` is the steps a job takes, or, with `local_epochs`, the most it may take. `model`
    and `data` are the sections its task carries (its activation checkpointing, its seq_len); the
    base model, and so the fingerprint updates are verified against, is the same at every facility.
    """

    facility: str
    ranks: int
    batch_size: int
    grad_accum_steps: int
    local_steps: int
    local_epochs: float | None
    lr: float
    weight_decay: float
    max_grad_norm: float | None
    model: ModelConfig
    data: DataConfig
    overridden: tuple[str, ...]
    example_privacy: ExamplePrivacyConfig | None = None  # DP-SGD in the facility's jobs; None: off

    @property
    def seq_len(self) -> int:
        return self.data.seq_len

    @property
    def activation_checkpointing(self) -> bool | None:
        """None under LoRA, where the worker does not checkpoint (the key is full fine-tuning's)."""
        return self.model.full.activation_checkpointing if self.model.peft == "none" else None

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over the whole job: micro-batch × accumulation × ranks."""
        return self.batch_size * self.grad_accum_steps * self.ranks

    def max_tokens(self, steps: int) -> int:
        """The most tokens `steps` optimizer steps can train on: each sequence holds at most seq_len.

        Under example-level DP a step's batch is a Poisson sample whose size only averages the global
        batch, so the sequences over all steps are Binomial with that mean: the bound allows its tail up to
        8 standard deviations (σ² ≤ mean), which an honest job passes with probability 1 − 1e-14 or so,
        instead of rejecting about half of the updates whose batches ran long.
        """
        sequences = steps * self.global_batch
        if self.example_privacy is not None:
            sequences += math.ceil(8 * math.sqrt(sequences)) + 8
        return sequences * self.seq_len


def check_recipe(index: int, facility: FacilityConfig, algorithm: AlgorithmConfig, model: ModelConfig) -> None:
    """Refuse an override that the algorithm or the model would silently ignore, naming its key and why."""
    train = facility.train
    key = f"facilities.{index}.train"
    if algorithm.name == "fedcompass":
        for name in ("local_steps", "local_epochs"):
            if getattr(train, name) is not None:
                raise KeyedValueError(
                    f"{key}.{name}",
                    f"does not apply under fedcompass, which assigns each job its local steps from the facility's "
                    f"measured speed (between algorithm.compass.min_steps and max_steps); remove {name}",
                )
    if train.activation_checkpointing is not None and model.peft != "none":
        raise KeyedValueError(
            f"{key}.activation_checkpointing",
            f"is full fine-tuning's (model.full), but model.peft is {model.peft!r}: a LoRA job keeps only the "
            "adapters' activations and does not checkpoint; remove the key, or set model.peft: none",
        )


def recipe_for(
    facility: FacilityConfig, algorithm: AlgorithmConfig, model: ModelConfig, data: DataConfig,
    example_privacy: ExamplePrivacyConfig | None = None,
) -> EffectiveRecipe:
    """`facility`'s recipe: its `train` keys, else the experiment's.

    A facility that sets `local_steps` without `local_epochs` trains steps, whatever `algorithm` says;
    one that sets `local_epochs` trains epochs, bounded by its `local_steps` or `algorithm.local_steps`.
    """
    train = facility.train
    if train.local_epochs is not None:
        epochs: float | None = train.local_epochs
    else:
        epochs = None if train.local_steps is not None else algorithm.local_epochs
    if train.activation_checkpointing is not None:
        full = model.full.model_copy(update={"activation_checkpointing": train.activation_checkpointing})
        model = model.model_copy(update={"full": full})
    if train.seq_len is not None:
        data = data.model_copy(update={"seq_len": train.seq_len})
    return EffectiveRecipe(
        facility=facility.name,
        ranks=facility.launcher.resources().ranks,
        batch_size=train.batch_size or algorithm.batch_size,
        grad_accum_steps=train.grad_accum_steps or algorithm.grad_accum_steps,
        local_steps=train.local_steps or algorithm.local_steps,
        local_epochs=epochs,
        lr=train.lr or algorithm.lr,
        weight_decay=algorithm.weight_decay,
        max_grad_norm=algorithm.max_grad_norm,
        model=model,
        data=data,
        overridden=tuple(train.given()),
        example_privacy=example_privacy,
    )
