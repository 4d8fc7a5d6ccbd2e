"""The `example_privacy` section: example-level differential privacy inside each facility (DP-SGD).

Off unless present. The unit protected is ONE training example at a facility: every optimizer step of
the facility's worker clips each example's gradient to `max_grad_norm` and adds Gaussian noise of std
`noise_multiplier · max_grad_norm` to their sum (Abadi et al. 2016, "Deep Learning with Differential
Privacy"; Opacus does the per-example gradients and the accounting, `fedhpc.worker.dp_sgd`). Everything
downstream of the worker, the server and the other facilities included, sees only noised updates.

It is a section of its own, not a key of `privacy:`, because it is independent of facility-level DP:
`privacy:` switches on DP-FedAvg at the server, with its own requirements (equal weighting, synchronous
rules), none of which example-level DP needs. The two compose when both are set.

What "example" means here, and what is refused because the guarantee would not hold (`check_example_privacy`):
- one record of the facility's data is one row of a batch; `data.packing` would put several examples in a
  row, so clipping would bound a row, not an example: refused;
- a step's batch is drawn by Poisson sampling (each example independently, at rate
  q = batch_size × grad_accum_steps / the facility's examples), and its micro-batches are
  physical splits of that one batch, so gradient accumulation is allowed;
- one rank per facility job: the sampled batch and its noise are drawn by one process (no
  distributed DP optimizer here);
- LoRA only, on a base not held in 4 bits, not compiled: Opacus computes per-example gradients of
  the LoRA layers (plain `nn.Linear`s) through its hooks, checked against per-example backward passes;
  full fine-tuning, QLoRA and compiled layers were not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedhpc.config.types import Frozen, KeyedValueError, PositiveFloat

if TYPE_CHECKING:
    from fedhpc.config.recipe import EffectiveRecipe


class ExamplePrivacyConfig(Frozen):
    noise_multiplier: float = Field(
        ..., gt=0.0, le=1000.0, allow_inf_nan=False,
        description="σ: the Gaussian noise std on each step's summed clipped gradients is σ·max_grad_norm",
    )
    max_grad_norm: PositiveFloat = Field(..., description="C: each example's gradient is clipped to this L2 norm")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="δ of each facility's (ε, δ) guarantee")
    target_epsilon: PositiveFloat | None = Field(
        None, description="a facility refuses a task that would take its ε (over all its rounds) past this"
    )
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus's accountant: RDP or PRV")
    release_loss: bool = Field(
        False, description="send each step's training loss to the server; unnoised, so outside the guarantee"
    )


class ExamplePrivacyJob(Frozen):
    """What a DP-SGD job carries: the settings, and where its facility's accountant ledger lives.

    The ledger is a file in the facility's own staging area, never staged back to the server
    (`fedhpc.worker.dp_ledger`): ε is summed over all the rounds the facility trained.
    """

    settings: ExamplePrivacyConfig
    accountant_file: Path


def check_example_privacy(recipes: list[EffectiveRecipe], proximal_mu: float) -> None:
    """What example-level DP cannot be run with (module docstring), each refused at the key to change.

    `recipes` are the facilities' effective recipes in the experiment file's order.
    """
    if proximal_mu > 0:
        raise KeyedValueError("algorithm.proximal_mu", "must be 0 with example_privacy: FedProx's term is not "
                              "part of the per-example loss that DP-SGD clips")
    for index, recipe in enumerate(recipes):
        model = recipe.model
        if recipe.data.packing:
            raise KeyedValueError("data.packing", "must be false with example_privacy: a packed row holds several "
                                  "examples, so per-row clipping would bound a row's influence, not an example's")
        if model.peft != "lora":
            raise KeyedValueError("model.peft", f"must be lora with example_privacy, not {model.peft}: per-example "
                                  "gradients of every weight (batch × model size of memory) are not supported here")
        if model.quantize != "none":
            raise KeyedValueError("model.quantize", f"must be none with example_privacy, not {model.quantize}: "
                                  "per-example gradients were not verified through bitsandbytes' 4-bit layers")
        if model.compile is not False:
            raise KeyedValueError("model.compile", f"must be false with example_privacy, not {model.compile}: "
                                  "Opacus's per-example hooks were not verified inside compiled decoder layers")
        if recipe.max_grad_norm is not None:
            raise KeyedValueError("algorithm.max_grad_norm", "must be unset with example_privacy: each example's "
                                  "gradient is clipped to example_privacy.max_grad_norm instead of the batch's")
        if recipe.ranks != 1:
            raise KeyedValueError(f"facilities.{index}.launcher", f"runs {recipe.ranks} ranks per job; "
                                  "example_privacy needs exactly 1 (the Poisson-sampled batch and its noise are "
                                  "drawn by one process)")
