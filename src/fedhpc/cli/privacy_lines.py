"""`fedhpc validate`'s privacy lines: the ε the planned rounds spend, the noise a target needs, and a warning.

All from the accountant (`fedhpc.privacy`, Google's dp-accounting) over the schedule the run will use
(config/privacy.py: sampling rate, accounted multiplier, expected participants), so what validate
prints is what the run records round by round.
"""

from __future__ import annotations

import math

from fedhpc.config import Experiment
from fedhpc.config.privacy import accounted_noise_multiplier, expected_participants, sampling_rate

#: above this ε, facility-level DP protects almost nothing (docs/privacy.md)
SANE_EPSILON = 10.0


def describe_privacy(exp: Experiment) -> list[str]:
    """The lines `validate` prints with privacy on; none with it off."""
    privacy = exp.privacy
    if privacy is None:
        return []
    from fedhpc.model_shape import model_shape, trainable_params
    from fedhpc.privacy import epsilon_after, noise_for_epsilon

    algorithm, rounds = exp.algorithm, exp.algorithm.rounds
    z, q = accounted_noise_multiplier(privacy, algorithm), sampling_rate(algorithm)
    m = expected_participants(algorithm, len(exp.facilities))
    clipping = privacy.clipping
    clip = (f"fixed clip norm C {clipping.clip_norm:g}" if clipping.mode == "fixed" else
            f"adaptive clip norm from C {clipping.clip_norm:g} toward the {clipping.target_quantile:g} quantile")
    lines = [f"privacy: facility-level DP-FedAvg, noise multiplier {privacy.noise_multiplier:g}, {clip}, "
             f"delta {privacy.delta:g}"]
    unit = "server steps" if algorithm.is_async else "rounds"
    if algorithm.name == "fedbuff":
        lines.append(f"  sampling: none; each server step averages K = {m:g} buffered updates (a facility's "
                     "several updates in one step are clipped to C together), accounted per step at q = 1")
    elif q < 1:
        lines.append(f"  sampling: Poisson, each facility asked with probability q = {q:g} each round (expected "
                     f"m = {m:g} of {len(exp.facilities)}; the noisy mean divides by m)")
    else:
        lines.append(f"  sampling: every facility every round (q = 1, m = {m:g})")
    planned = epsilon_after(z, q, rounds, privacy.delta)
    shown = "inf (noise multiplier 0: clipping only, no privacy)" if math.isinf(planned) else f"{planned:.3g}"
    lines.append(f"  epsilon after the planned {rounds} {unit}: {shown} at delta {privacy.delta:g}")
    try:
        shape = model_shape(exp.model)
    except Exception:  # noqa: BLE001 - the shape is a nicety here; the memory plan reports why it is unknown
        shape = None
    per_coordinate = privacy.noise_multiplier * clipping.clip_norm / m
    if shape is not None and z > 0:
        values = trainable_params(shape, exp.model.peft, exp.model.lora.r, exp.model.lora.target_modules)
        lines.append(f"  noise: std {per_coordinate:.3g} per value of the mean change; over its {values:,} "
                     f"trainable values a norm of about {per_coordinate * math.sqrt(values):.3g}, against a "
                     f"clipped mean change of at most C = {clipping.clip_norm:g}")
    elif z > 0:
        lines.append(f"  noise: std {per_coordinate:.3g} per value of the mean change (z·C/m)")
    if privacy.target_epsilon is not None:
        lines += _target_lines(privacy.target_epsilon, z, q, rounds, privacy.delta, unit)
    if planned > SANE_EPSILON:
        needed = noise_for_epsilon(SANE_EPSILON, q, rounds, privacy.delta)
        lines.append(f"  WARNING: epsilon {shown} exceeds {SANE_EPSILON:g}: at this scale facility-level DP protects "
                     f"almost nothing; see docs/privacy.md (epsilon {SANE_EPSILON:g} over {rounds} {unit} needs noise "
                     f"multiplier {needed:.3g})")
    return lines


def _target_lines(target: float, z: float, q: float, rounds: int, delta: float, unit: str) -> list[str]:
    """The calibrated multiplier for `target` over the planned rounds, and where the configured one stops."""
    from fedhpc.privacy import epsilon_after, noise_for_epsilon

    needed = noise_for_epsilon(target, q, rounds, delta)
    lines = [f"  target epsilon {target:g}: the planned {rounds} {unit} need noise multiplier {needed:.3g} or more"]
    lo, hi = 0, rounds  # the most rounds within the target, by bisection (ε grows with the rounds)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if epsilon_after(z, q, mid, delta) <= target else (lo, mid - 1)
    if lo < rounds:
        lines.append(f"  with noise multiplier {z:g} the run stops after {lo} of {rounds} {unit} (exit 6): "
                     f"{unit[:-1]} {lo + 1} would spend epsilon {epsilon_after(z, q, lo + 1, delta):.3g}")
    return lines
