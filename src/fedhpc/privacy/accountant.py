"""ε of facility-level DP-FedAvg, through Google's `dp-accounting` (RDP accountant); no formula of our own.

Each round (or FedBuff server step) is one Gaussian mechanism of noise multiplier z on the sum of
clipped changes (sensitivity C: one facility added or removed). How the round's participants are drawn
decides the event:

- every facility, every round (q = 1): the Gaussian alone;
- each facility independently with probability q (Poisson): `PoissonSampledDpEvent`;
- a fixed-size sample of `sample_size` out of `population` without replacement (what fedhpc's
  `participation` does): `SampledWithoutReplacementDpEvent`. Its analysis (Wang, Balle, Kasiviswanathan
  2019) is for the replace-one relation, where one facility's change can move the sum by 2C, so the
  Gaussian's multiplier there is z/2.

Amplification by sampling holds only while the sample stays secret: a run whose sample anyone can
recompute (a seed in the experiment file) should be accounted at q = 1.
"""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting.rdp import RdpAccountant

NeighboringRelation = dp_accounting.NeighboringRelation
# Where the calibration's search starts: z = 0 would divide by zero in the sampled analyses, and a target
# met below 1% noise is one no run would set.
SMALLEST_MULTIPLIER = 0.01


def _round_event(
    noise_multiplier: float, sampling_rate: float, population: int | None, sample_size: int | None
) -> tuple[dp_accounting.DpEvent, NeighboringRelation]:
    """One round's event and the neighbouring relation it is accounted under."""
    if population is not None and sample_size is not None and sample_size < population:
        event = dp_accounting.GaussianDpEvent(noise_multiplier / 2.0)  # replace-one: sensitivity 2C
        return (
            dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size, event),
            NeighboringRelation.REPLACE_ONE,
        )
    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling rate must be in (0, 1], got {sampling_rate}")
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1.0:
        return gaussian, NeighboringRelation.ADD_OR_REMOVE_ONE
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian), NeighboringRelation.ADD_OR_REMOVE_ONE


def schedule_event(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    population: int | None = None,
    sample_size: int | None = None,
) -> tuple[dp_accounting.DpEvent, NeighboringRelation]:
    """The whole run's event: `rounds` compositions of one round's."""
    event, relation = _round_event(noise_multiplier, sampling_rate, population, sample_size)
    return dp_accounting.SelfComposedDpEvent(event, rounds), relation


def epsilon_after(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    population: int | None = None,
    sample_size: int | None = None,
) -> float:
    """ε at `delta` after `rounds` rounds; 0 before any, ∞ without noise."""
    if rounds < 0:
        raise ValueError(f"rounds must be non-negative, got {rounds}")
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0.0:
        return math.inf
    event, relation = schedule_event(noise_multiplier, sampling_rate, rounds, population, sample_size)
    return float(RdpAccountant(neighboring_relation=relation).compose(event).get_epsilon(delta))


def noise_for_epsilon(
    target_epsilon: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    population: int | None = None,
    sample_size: int | None = None,
) -> float:
    """The smallest noise multiplier whose ε after `rounds` stays within `target_epsilon` (the library's search)."""
    if target_epsilon <= 0.0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon}")
    relation = schedule_event(1.0, sampling_rate, 1, population, sample_size)[1]
    multiplier = dp_accounting.calibrate_dp_mechanism(
        lambda: RdpAccountant(neighboring_relation=relation),
        lambda z: schedule_event(z, sampling_rate, rounds, population, sample_size)[0],
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(SMALLEST_MULTIPLIER, 1.0),
    )
    return float(multiplier)
