"""Percentile bootstrap over questions: seeded, paired, honest about undefined values, and the verdict rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedhpc.chem.bootstrap import Estimate, beats, estimates, paired_estimates, resample_indices
from fedhpc.chem.metrics import prepare

LIPINSKI = "property_prediction-lipinski"
LOGP = "property_prediction-logp"


def test_resamples_are_seeded_and_draw_with_replacement() -> None:
    draws = resample_indices(50, resamples=200, seed=3)
    assert draws.shape == (200, 50) and draws.min() >= 0 and draws.max() < 50
    assert np.array_equal(draws, resample_indices(50, resamples=200, seed=3))
    assert not np.array_equal(draws, resample_indices(50, resamples=200, seed=4))
    assert any(len(set(row)) < 50 for row in draws.tolist())  # with replacement: repeats happen


def booleans(correct: int, total: int) -> tuple[list[list[str]], list[list[str]]]:
    answers = [["<BOOLEAN> Yes </BOOLEAN>"]] * correct + [["<BOOLEAN> No </BOOLEAN>"]] * (total - correct)
    return answers, [["Yes"]] * total


def test_accuracy_interval_matches_the_binomial_spread() -> None:
    answers, golds = booleans(50, 100)
    result = estimates(prepare(LIPINSKI, answers, golds), resample_indices(100))
    accuracy = result["accuracy"]
    assert accuracy.value == 0.5
    lo, hi = accuracy.ci95  # type: ignore[misc]
    # normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 100) = [0.402, 0.598]
    assert 0.38 <= lo <= 0.42 and 0.58 <= hi <= 0.62
    assert accuracy.as_json() == {"value": 0.5, "ci95": [lo, hi]}


def test_model_and_baseline_are_resampled_on_the_same_questions() -> None:
    answers, golds = booleans(30, 60)
    model = prepare(LIPINSKI, answers, golds)
    same = prepare(LIPINSKI, list(answers), golds)
    mine, theirs = paired_estimates(model, same, 60, resamples=300)
    assert mine["accuracy"] == theirs["accuracy"]  # identical answers, identical draws: identical intervals


def test_an_undefined_metric_has_no_value_and_no_interval() -> None:
    golds = [["1.5"]] * 20
    nothing = prepare(LOGP, [["no number here"]] * 20, golds)
    rmse = estimates(nothing, resample_indices(20))["rmse"]
    assert math.isnan(rmse.value) and rmse.ci95 is None
    assert rmse.as_json() == {"value": None, "ci95": None}


def test_an_interval_needs_the_metric_defined_on_nearly_every_resample() -> None:
    golds = [["1.0"]] * 10
    one_parses = prepare(LOGP, [["<NUMBER> 2.0 </NUMBER>"]] + [["none"]] * 9, golds)
    # a resample misses the one parseable answer with probability 0.9^10 = 35%: too many undefined resamples
    assert estimates(one_parses, resample_indices(10))["rmse"].ci95 is None
    half_parse = prepare(LOGP, [["<NUMBER> 2.0 </NUMBER>"]] * 5 + [["none"]] * 5, golds)
    assert estimates(half_parse, resample_indices(10))["rmse"].ci95 == (1.0, 1.0)


def test_no_questions_give_no_intervals() -> None:
    result = estimates(prepare(LIPINSKI, [], []), resample_indices(0))
    assert all(e.ci95 is None for e in result.values())


@pytest.mark.parametrize(
    ("model", "baseline", "higher", "expected"),
    [
        ((0.8, 0.9), (0.5, 0.7), True, True),
        ((0.6, 0.9), (0.5, 0.7), True, False),  # overlapping
        ((0.5, 0.7), (0.8, 0.9), True, False),  # apart, on the wrong side
        ((1.0, 1.4), (1.9, 2.1), False, True),  # RMSE: lower is better
        ((1.0, 2.0), (1.9, 2.1), False, False),
        (None, (0.5, 0.7), True, False),  # nothing shown
    ],
)
def test_beats_means_intervals_apart_on_the_better_side(model, baseline, higher, expected) -> None:  # noqa: ANN001
    assert beats(Estimate(0.0, model), Estimate(0.0, baseline), higher) is expected
