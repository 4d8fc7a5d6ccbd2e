"""ε of facility-level DP-FedAvg, through Google's `dp-accounting` (RDP accountant); no formula of our own.

Each round (or FedBuff server step) is one Gaussian mechanism of noise multiplier z on the sum of
clipped changes (sensitivity C: one facility added or removed). With every facility in every round
(q = 1) that Gaussian is the round's event; with each facility taking part independently with
probability q (Poisson sampling, what `algorithm.participation` does under privacy), it is
`PoissonSampledDpEvent`. Amplification by sampling holds only while the sample is secret from whoever
sees the globals: the run draws it from a key kept in the ledger, never from the experiment's seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import dp_accounting
from dp_accounting.rdp import RdpAccountant

# Where the calibration's search starts: z = 0 would divide by zero in the sampled analyses, and a target
# met below 1% noise is one no run would set.
SMALLEST_MULTIPLIER = 0.01


def schedule_event(noise_multiplier: float, sampling_rate: float, rounds: int) -> dp_accounting.DpEvent:
    """The whole run's event: `rounds` compositions of one round's Gaussian, Poisson-sampled when q < 1."""
    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling rate must be in (0, 1], got {sampling_rate}")
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    return dp_accounting.SelfComposedDpEvent(event, rounds)


@contextmanager
def _quiet_library() -> Iterator[None]:
    """Hide the RDP series' notes that it skipped an order that did not converge (it still bounds ε with the
    others): at q < 1 they come at every call, i.e. every round, and say nothing a user can act on."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def epsilon_after(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """ε at `delta` after `rounds` rounds; 0 before any, ∞ without noise."""
    if rounds < 0:
        raise ValueError(f"rounds must be non-negative, got {rounds}")
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0.0:
        return math.inf
    event = schedule_event(noise_multiplier, sampling_rate, rounds)
    with _quiet_library():
        return float(RdpAccountant().compose(event).get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, sampling_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier whose ε after `rounds` stays within `target_epsilon` (the library's search)."""
    if target_epsilon <= 0.0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon}")
    schedule_event(1.0, sampling_rate, rounds)  # a bad sampling rate fails here, not inside the search
    with _quiet_library():
        multiplier = dp_accounting.calibrate_dp_mechanism(
            RdpAccountant,
            lambda z: schedule_event(z, sampling_rate, rounds),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(SMALLEST_MULTIPLIER, 1.0),
        )
    return float(multiplier)
