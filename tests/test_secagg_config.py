"""`secure_aggregation:` in the experiment file: its defaults, and each combination it refuses, at its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhpc.config import load_experiment
from fedhpc.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "secure-aggregation" / "experiment.yaml"


def test_the_example_loads_with_its_section():
    experiment = load_experiment(EXAMPLE)
    secure = experiment.secure_aggregation
    assert secure is not None and secure.threshold == 2 and secure.fractional_bits == 24
    assert secure.round_threshold(2) == 2
    assert load_experiment(EXAMPLE, ["secure_aggregation.threshold=null"]).secure_aggregation.round_threshold(9) == 6


@pytest.mark.parametrize("override, key, words", [
    ("algorithm.weighting=samples", "algorithm.weighting", "set weighting: equal"),
    ("algorithm.max_update_norm=1.0", "algorithm.max_update_norm", "cannot measure a masked update's norm"),
    ("secure_aggregation.threshold=1", "secure_aggregation.threshold", "over half of the 2 facilities"),
    ("secure_aggregation.threshold=3", "secure_aggregation.threshold", "at most 2"),
    ("secure_aggregation.value_range=1e12", "secure_aggregation.value_range", "could wrap"),
    ("secure_aggregation.keys_dirs.gamma=/tmp/k", "secure_aggregation.keys_dirs", "names no facility: gamma"),
    ("secure_aggregation.fractional_bits=60", "secure_aggregation.fractional_bits", "less than or equal to 52"),
])
def test_a_combination_secure_aggregation_cannot_serve_is_refused_at_its_key(override, key, words):
    with pytest.raises(ConfigError) as caught:
        load_experiment(EXAMPLE, [override])
    assert key in str(caught.value) and words in str(caught.value)


def test_server_side_privacy_is_refused_with_why():
    with pytest.raises(ConfigError, match="privacy: server-side differential privacy clips each update"):
        load_experiment(EXAMPLE, ["privacy.noise_multiplier=0.05", "privacy.clipping.clip_norm=2.0"])


def test_asynchronous_algorithms_are_refused():
    with pytest.raises(ConfigError, match="algorithm.name.*needs synchronous rounds"):
        load_experiment(EXAMPLE, ["algorithm.name=fedasync"])
