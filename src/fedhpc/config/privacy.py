"""The `privacy` section: facility-level differential privacy (DP-FedAvg with fixed or adaptive clipping).

Off unless present. The unit protected is one facility's whole contribution to a round; `fedhpc.privacy`
implements it and docs/privacy.md says what the guarantee is worth at this field's scale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhpc.config.types import Frozen, PositiveFloat


class ClippingConfig(Frozen):
    """How each update's change is bounded: a fixed L2 norm C, or one that follows a quantile of the norms.

    Adaptive clipping is Andrew et al., 2021, "Differentially Private Learning with Adaptive Clipping".
    """

    mode: Literal["fixed", "adaptive"] = "fixed"
    clip_norm: PositiveFloat = Field(1.0, description="C for fixed clipping; the starting C for adaptive")
    target_quantile: float = Field(
        0.5, gt=0.0, lt=1.0, description="adaptive: the fraction of updates left unclipped (Andrew et al. γ)"
    )
    learning_rate: float = Field(
        0.2, gt=0.0, allow_inf_nan=False, description="adaptive: η_C of the geometric update C ← C·exp(−η_C(b̃ − γ))"
    )
    count_noise_multiplier: float | None = Field(
        None, gt=0.0, allow_inf_nan=False,
        description="adaptive: σ_b, the noise on the unclipped count; default expected participants / 20",
    )


class PrivacyConfig(Frozen):
    noise_multiplier: float = Field(
        ..., ge=0.0, allow_inf_nan=False, description="z: Gaussian noise std z·C on the sum (0: clipping only, ε = ∞)"
    )
    clipping: ClippingConfig = ClippingConfig()
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="δ of the (ε, δ) guarantee")
    target_epsilon: PositiveFloat | None = Field(None, description="stop before a round would exceed this ε")
    noise_seed: int | None = Field(
        None, ge=0, le=2**63 - 1,
        description="testing/reproduction only: a known seed lets anyone subtract the noise; unset: OS entropy",
    )
