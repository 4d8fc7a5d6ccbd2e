"""Staleness discounts s(τ) — Xie et al., 2019, "Asynchronous Federated Optimization" (FedAsync).

τ is the number of global versions between the global an update was trained from and the global it is
applied to. A stale update was computed against parameters the server has since moved away from, so
it counts for less:

    constant:    s(τ) = 1
    polynomial:  s(τ) = (1 + τ)^−a
    hinge:       s(τ) = 1 if τ ≤ b, else 1 / (a·(τ − b) + 1)

s(0) = 1 for every function, so a fresh update is never discounted.
"""

from __future__ import annotations

from fedhpc.config import StalenessConfig


def staleness_weight(config: StalenessConfig, staleness: int) -> float:
    if staleness < 0:
        raise ValueError(f"staleness must be ≥ 0 (global versions behind), got {staleness}")
    if config.function == "constant":
        return 1.0
    if config.function == "polynomial":
        return (1.0 + staleness) ** -config.a
    if staleness <= config.b:
        return 1.0
    return 1.0 / (config.a * (staleness - config.b) + 1.0)
