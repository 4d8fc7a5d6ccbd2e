"""The `privacy` section: facility-level differential privacy (DP-FedAvg with fixed or adaptive clipping).

Off unless present. The unit protected is one facility's whole contribution to a round; `fedhpc.privacy`
implements it and docs/privacy.md says what the guarantee is worth at this field's scale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhpc.config.algorithm import AlgorithmConfig
from fedhpc.config.types import Frozen, KeyedValueError, PositiveFloat, one_of


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


#: The rules DP-FedAvg's accounting holds for: a fixed denominator and one noised release per round (or server step).
PRIVATE_ALGORITHMS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedbuff")


def accounting_refusal(algorithm: AlgorithmConfig) -> tuple[str, str] | None:
    """Why `algorithm` cannot be accounted with facility-level DP, as (the key to change, the reason); or None.

    Torch-free so the experiment file's validation can call it; `fedhpc.privacy.refusal` gives its reason.
    """
    if algorithm.name not in PRIVATE_ALGORITHMS:
        return ("algorithm.name", f"{algorithm.name} cannot be used with privacy: each asynchronous step mixes in "
                "updates as they arrive with no fixed denominator, so no bound on one facility's influence per "
                f"release can be stated and no accountant applies; use {one_of(PRIVATE_ALGORITHMS)}")
    if algorithm.weighting != "equal":
        return ("algorithm.weighting", f"must be equal with privacy, not {algorithm.weighting}: a samples, steps "
                "or tokens weight can give one facility nearly the whole average, so its influence is not bounded "
                "by the clip norm over the expected participants and the noise would not cover it")
    if algorithm.late_updates == "next_round":
        return ("algorithm.late_updates", "next_round cannot be used with privacy: a late update would count in a "
                "round that did not sample its facility, which the subsampled accountant does not allow; use drop")
    return None


def sampling_rate(algorithm: AlgorithmConfig) -> float:
    """q of the accountant: each facility takes part in a round independently with probability `participation`.

    FedBuff has no sampling: every facility trains all the time, so each server step is accounted at q = 1.
    """
    return 1.0 if algorithm.is_async else algorithm.participation


def expected_participants(algorithm: AlgorithmConfig, num_facilities: int) -> float:
    """m, the fixed denominator of the noisy mean: q·N facilities per round, or FedBuff's buffer of K updates."""
    return float(algorithm.fedbuff_k()) if algorithm.name == "fedbuff" else algorithm.participation * num_facilities


def accounted_noise_multiplier(privacy: PrivacyConfig, algorithm: AlgorithmConfig) -> float:
    """The noise multiplier the accountant composes: noise std over one facility's largest influence on the sum.

    z for every rule allowed: a facility sends at most one update per synchronous round, clipped to C, and a
    FedBuff facility that fills k places of one buffer has each of its k updates clipped to C/k
    (`fedhpc.privacy.PrivateAggregation`), so its whole influence on a server step is C too.
    """
    return privacy.noise_multiplier


def check_privacy(privacy: PrivacyConfig, algorithm: AlgorithmConfig, num_facilities: int) -> None:
    """The checks `privacy` needs from the other sections; each raises at the key to change."""
    refusal = accounting_refusal(algorithm)
    if refusal is not None:
        raise KeyedValueError(*refusal)
    if privacy.target_epsilon is not None and privacy.noise_multiplier == 0:
        raise KeyedValueError("privacy.target_epsilon", "cannot be met with privacy.noise_multiplier 0 (clipping "
                              "only spends an infinite epsilon); set a noise multiplier or remove target_epsilon")
    clipping = privacy.clipping
    if clipping.mode == "adaptive" and algorithm.name == "fedbuff":
        raise KeyedValueError("privacy.clipping.mode", "adaptive cannot be used with fedbuff: one facility may "
                              "send several of a server step's updates, so its share of the noisy unclipped count "
                              "is not bounded by one; use clipping.mode fixed")
    if clipping.mode != "adaptive" or privacy.noise_multiplier == 0:
        return
    count_noise = clipping.count_noise_multiplier
    if count_noise is None:
        count_noise = expected_participants(algorithm, num_facilities) / 20
    if privacy.noise_multiplier >= 2 * count_noise:
        key = "privacy.clipping.count_noise_multiplier" if clipping.count_noise_multiplier else "privacy.noise_multiplier"
        raise KeyedValueError(key, f"adaptive clipping spends part of privacy.noise_multiplier "
                              f"({privacy.noise_multiplier:g}) on the unclipped count, whose noise σ_b is "
                              f"{count_noise:g}; that needs noise_multiplier < 2·σ_b = {2 * count_noise:g} "
                              "(Andrew et al. 2021, section 3): lower noise_multiplier, raise "
                              "clipping.count_noise_multiplier, or use clipping.mode fixed")
