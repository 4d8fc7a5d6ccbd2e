"""Durations of the simulated launcher: a constant, or a distribution each job draws its own value from."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Field, ValidatorFunctionWrapHandler, WrapValidator, model_validator

from fedhpc.config.types import Frozen


Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class UniformDistribution(Frozen):
    """``{uniform: [low, high]}``: every value in between equally likely."""

    uniform: tuple[Seconds, Seconds]

    @model_validator(mode="after")
    def _ordered(self) -> UniformDistribution:
        low, high = self.uniform
        if low > high:
            raise ValueError(f"uniform: low ({low:g}) is above high ({high:g}); write [low, high]")
        return self


class LognormalParameters(Frozen):
    median: float = Field(gt=0.0, allow_inf_nan=False)
    sigma: float = Field(ge=0.0, allow_inf_nan=False, description="spread of log(value); 0: always the median")


class LognormalDistribution(Frozen):
    """``{lognormal: {median: m, sigma: s}}``: mostly near the median, with the long tail of real batch queues."""

    lognormal: LognormalParameters


class ExponentialDistribution(Frozen):
    """``{exponential: mean}``: memoryless, mostly short with the occasional long one."""

    exponential: float = Field(gt=0.0, allow_inf_nan=False)


DISTRIBUTIONS: dict[str, type[UniformDistribution | LognormalDistribution | ExponentialDistribution]] = {
    "uniform": UniformDistribution,
    "lognormal": LognormalDistribution,
    "exponential": ExponentialDistribution,
}
_DISTRIBUTION_FORMS = (
    "a non-negative number or exactly one of {uniform: [low, high]}, {lognormal: {median: m, sigma: s}}, "
    "{exponential: mean}"
)


def _distribution_by_form(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Pick the form by the mapping's one key, so a mistake is reported once and under the key the user wrote.

    (A plain union would report a failed attempt at every form.)
    """
    if isinstance(value, dict):
        form = DISTRIBUTIONS.get(next(iter(value))) if len(value) == 1 else None
        if form is None:
            raise ValueError(f"must be {_DISTRIBUTION_FORMS}; got the keys {', '.join(map(str, value)) or '(none)'}")
        return form.model_validate(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"must be {_DISTRIBUTION_FORMS}; got {value}")
        return float(value)
    if isinstance(value, tuple(DISTRIBUTIONS.values())):
        return handler(value)
    raise ValueError(f"must be {_DISTRIBUTION_FORMS}; got {value!r}")


Distribution = Annotated[
    float | UniformDistribution | LognormalDistribution | ExponentialDistribution, WrapValidator(_distribution_by_form)
]
"""Seconds: a constant, or a distribution each job draws its own value from."""
