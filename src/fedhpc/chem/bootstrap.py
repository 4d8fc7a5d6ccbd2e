"""95% percentile bootstrap intervals over questions, paired between a model and its baseline.

Why over questions: the test split is a sample of questions (molecules), so that
is what a resample redraws; the several answers of one question (LlaSMol's beam
returns) stay together. Why paired: the model and its trivial baseline answer the
same questions, and each resample draws the same question indices for both, so
the two intervals describe the same hypothetical test sets.

The interval is the percentile one (Efron & Tibshirani 1993, *An Introduction to
the Bootstrap*, ch. 13): the 2.5th and 97.5th percentiles of a metric over
`RESAMPLES` resamples of the questions, drawn with replacement from a seeded
generator, so the same questions and answers always give the same interval.
Every resample is scored by `metrics.aggregate`, which does no parsing.

A metric can be undefined on a resample (RMSE when no drawn answer parses, MCC
when every drawn gold answer is "Yes"). Percentiles are taken over the resamples
where it is defined; when fewer than `MIN_DEFINED_SHARE` of them are, the
interval would describe a different population than the point value, and it is
reported as None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedhpc.chem.metrics import PreparedTask, aggregate

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
MIN_DEFINED_SHARE = 0.9
#: Keys of `aggregate`'s result that count rather than measure.
COUNT_KEYS = frozenset({"n"})


@dataclass(frozen=True)
class Estimate:
    """A metric's value on all questions and its 95% interval; NaN value = undefined, None interval = unknown."""

    value: float
    ci95: tuple[float, float] | None

    def as_json(self) -> dict[str, float | list[float] | None]:
        """`{"value": float | null, "ci95": [lo, hi] | null}`, the results file's shape (NaN is not JSON)."""
        return {
            "value": self.value if math.isfinite(self.value) else None,
            "ci95": None if self.ci95 is None else [self.ci95[0], self.ci95[1]],
        }


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """`resamples` rows of `n` question indices drawn with replacement; shape (resamples, n)."""
    if n < 0 or resamples < 1:
        raise ValueError(f"need n >= 0 and resamples >= 1, got n={n}, resamples={resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), int)


def estimates(prepared: PreparedTask, draws: np.ndarray) -> dict[str, Estimate]:
    """Every metric `aggregate` gives for `prepared`, with its interval over the rows of `draws`."""
    point = aggregate(prepared)
    metrics = [name for name in point if name not in COUNT_KEYS]
    if draws.shape[1] == 0:
        return {name: Estimate(float(point[name]), None) for name in metrics}
    samples: dict[str, list[float]] = {name: [] for name in metrics}
    for row in draws:
        scored = aggregate(prepared, row.tolist())
        for name in metrics:
            samples[name].append(float(scored.get(name, math.nan)))
    return {name: Estimate(float(point[name]), _interval(samples[name])) for name in metrics}


def _interval(values: list[float]) -> tuple[float, float] | None:
    defined = np.asarray([v for v in values if math.isfinite(v)])
    if len(defined) < MIN_DEFINED_SHARE * len(values) or len(defined) == 0:
        return None
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(defined, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_estimates(
    model: PreparedTask, baseline: PreparedTask, n: int, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """The model's and the baseline's estimates over the same resampled questions (both answer `n` questions)."""
    draws = resample_indices(n, resamples, seed)
    return estimates(model, draws), estimates(baseline, draws)


def beats(model: Estimate, baseline: Estimate, higher_is_better: bool) -> bool:
    """True when the two 95% intervals do not overlap and the model's lies on the better side.

    An undefined value or interval on either side is not a win: nothing was shown.
    """
    if model.ci95 is None or baseline.ci95 is None:
        return False
    if higher_is_better:
        return model.ci95[0] > baseline.ci95[1]
    return model.ci95[1] < baseline.ci95[0]


def as_json(values: Mapping[str, Estimate]) -> dict[str, dict[str, float | list[float] | None]]:
    """`{metric: {"value", "ci95"}}` for a results file."""
    return {name: estimate.as_json() for name, estimate in values.items()}
