"""Facility-level differential privacy: DP-FedAvg's clipping and server noise, adaptive clipping, the
accountant (Google's dp-accounting), and the wrapper that makes any linear aggregation rule private.

docs/privacy.md says what is protected, from whom, and what ε is worth at this field's scale.
"""

from fedhpc.privacy.accountant import epsilon_after, noise_for_epsilon
from fedhpc.privacy.adaptive import count_noise_multiplier, delta_noise_multiplier, next_clip_norm
from fedhpc.privacy.aggregator import CLIP_NORM_KEY, GENERATOR_KEY, PrivacyRound, PrivateAggregation
from fedhpc.privacy.clipping import clip_factor, delta_norm, delta_norms
from fedhpc.privacy.compose import make_private, refusal
from fedhpc.privacy.noise import NoiseSource

__all__ = [
    "CLIP_NORM_KEY",
    "GENERATOR_KEY",
    "NoiseSource",
    "PrivacyRound",
    "PrivateAggregation",
    "clip_factor",
    "count_noise_multiplier",
    "delta_noise_multiplier",
    "delta_norm",
    "delta_norms",
    "epsilon_after",
    "make_private",
    "next_clip_norm",
    "noise_for_epsilon",
    "refusal",
]
