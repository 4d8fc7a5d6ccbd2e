"""Adaptive clipping — Andrew et al., 2021, "Differentially Private Learning with Adaptive Clipping".

C follows the γ-quantile of the update norms: each round counts the updates left unclipped
(b_k = [‖Δ_k‖ ≤ C]), estimates their fraction with noise, and moves C geometrically:

    b̃ = (Σ_k (b_k − ½) + N(0, σ_b²)) / m + ½        C ← C · exp(−η_C · (b̃ − γ))

m is the expected participant count (fixed, like the delta's denominator). The count is centred
(b_k − ½, Andrew et al. §3) so that one facility more or less moves the noisy sum by ½ at most: that is
the sensitivity the count's noise σ_b is measured against. The count is a second release, so the noise on
the update must shrink to keep the total accounted multiplier z (their Theorem 1 / §3.1):

    z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)

which needs 2σ_b > z. The accountant then counts one Gaussian mechanism of multiplier z per round.
"""

from __future__ import annotations

import math

from fedhpc.errors import PrivacyRefused
from fedhpc.privacy.noise import NoiseSource

COUNT_NOISE_DIVISOR = 20.0  # Andrew et al.'s default σ_b = m/20


def count_noise_multiplier(configured: float | None, expected_participants: float) -> float:
    """σ_b: the configured one, else m/20 (Andrew et al.)."""
    return expected_participants / COUNT_NOISE_DIVISOR if configured is None else configured


def delta_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """z_Δ, the multiplier the update's noise gets so that update and count together account as `noise_multiplier`.

    z = 0 (no noise: ε = ∞ anyway) gives 0. Refuses (`PrivacyRefused`) a z the count's noise already
    spends in full (2σ_b ≤ z), saying which settings fix it.
    """
    if noise_multiplier == 0.0:
        return 0.0
    if 2.0 * count_noise <= noise_multiplier:
        raise PrivacyRefused(
            f"adaptive clipping's count noise σ_b = {count_noise:g} leaves no budget for the update's noise at "
            f"noise_multiplier z = {noise_multiplier:g} (it needs 2·σ_b > z, Andrew et al. 2021 §3.1); raise "
            "clipping.count_noise_multiplier above z/2 (its default is the expected participants / 20), lower "
            "noise_multiplier, or use clipping.mode: fixed",
            key="privacy.clipping.count_noise_multiplier",
        )
    return (noise_multiplier**-2 - (2.0 * count_noise) ** -2) ** -0.5


def next_clip_norm(
    clip_norm: float,
    unclipped: int,
    updates: int,
    expected_participants: float,
    target_quantile: float,
    learning_rate: float,
    count_noise: float,
    noise: NoiseSource,
) -> float:
    """C for the next round from this round's count of unclipped updates, with one noise draw (even if σ_b = 0)."""
    centred = unclipped - 0.5 * updates + noise.scalar(count_noise)
    fraction = centred / expected_participants + 0.5
    return clip_norm * math.exp(-learning_rate * (fraction - target_quantile))
