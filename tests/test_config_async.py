"""The asynchronous algorithms' keys: defaults, and load-time errors that name the file and the key.

An option given a non-default value for an algorithm that does not use it would be silently ignored,
and a synchronous-round option (deadline, late updates, partial participation) means nothing without
rounds, so both fail when the file is loaded, naming the dotted key to edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedhpc.config import (
    ASYNC_ALGORITHMS,
    AlgorithmConfig,
    CompassConfig,
    Experiment,
    StalenessConfig,
    load_experiment,
)
from fedhpc.errors import ConfigError


def write(project: Path, algorithm: dict[str, Any]) -> Path:
    raw = {
        "name": "probe",
        "run_dir": str(project / "run"),
        "algorithm": {"local_steps": 10, **algorithm},
        "facilities": [{"name": "alpha", "data": "data/alpha.jsonl"}, {"name": "beta", "data": "data/beta.jsonl"}],
    }
    path = project / "exp.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_async_names_and_defaults(project: Path) -> None:
    assert ASYNC_ALGORITHMS == ("fedasync", "fedbuff", "fedcompass")
    for name in ASYNC_ALGORITHMS:
        algorithm = load_experiment(write(project, {"name": name})).algorithm
        assert algorithm.is_async
        assert algorithm.staleness == StalenessConfig(function="polynomial", a=0.5, b=4)
        assert algorithm.max_staleness == 8
        assert algorithm.fedbuff_k() == 3
        assert algorithm.compass == CompassConfig()
        assert (algorithm.compass.latest_time_factor, algorithm.compass.speed_momentum) == (1.2, 0.9)
    assert load_experiment(write(project, {"name": "fedasync"})).algorithm.mixing_alpha() == 0.6
    assert load_experiment(write(project, {"name": "fedcompass"})).algorithm.mixing_alpha() == 1.0
    for name in ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        assert not AlgorithmConfig(name=name).is_async
    with pytest.raises(ValueError, match="fedavg has no mixing weight"):
        AlgorithmConfig().mixing_alpha()


@pytest.mark.parametrize(
    ("local_steps", "compass", "expected"),
    [
        (10, {}, (2, 10)),  # ⌈0.2·10⌉
        (15, {}, (3, 15)),  # ⌈0.2·15⌉ = 3 (0.2·15 is 3.0000000000000004 in floats)
        (12, {}, (3, 12)),  # ⌈2.4⌉
        (1, {}, (1, 1)),
        (10, {"max_steps": 40}, (8, 40)),
        (10, {"min_steps": 4}, (4, 10)),
        (10, {"min_steps": 5, "max_steps": 5}, (5, 5)),
    ],
)
def test_compass_steps(project: Path, local_steps: int, compass: dict[str, int], expected: tuple[int, int]) -> None:
    experiment = load_experiment(write(project, {"name": "fedcompass", "local_steps": local_steps, "compass": compass}))
    assert experiment.algorithm.compass_steps() == expected


def test_full_async_sections_load(project: Path) -> None:
    fedasync = load_experiment(
        write(
            project,
            {
                "name": "fedasync",
                "alpha": 0.4,
                "staleness": {"function": "hinge", "a": 10, "b": 2},
                "max_staleness": 0,
                "participation": 1.0,  # the default, spelled out: not a partial-participation request
                "server": {"momentum": 0.5},  # server options are ignored, as for fedavg
            },
        )
    ).algorithm
    assert (fedasync.mixing_alpha(), fedasync.staleness.function, fedasync.max_staleness) == (0.4, "hinge", 0)
    fedbuff = load_experiment(write(project, {"name": "fedbuff", "buffer_size": 5, "server": {"lr": 0.5}})).algorithm
    assert (fedbuff.fedbuff_k(), fedbuff.server.lr) == (5, 0.5)
    compass = load_experiment(
        write(
            project,
            {"name": "fedcompass", "alpha": 0.9, "compass": {"min_steps": 2, "latest_time_factor": 1.5, "speed_momentum": 1}},
        )
    ).algorithm
    assert (compass.mixing_alpha(), compass.compass_steps(), compass.compass.latest_time_factor) == (0.9, (2, 10), 1.5)


# (id, the algorithm section, the key the error must name, a fragment of what it must say)
BAD = [
    ("alpha_for_fedavg", {"alpha": 0.5}, "algorithm.alpha", "only applies to algorithm.name fedasync or fedcompass"),
    ("alpha_for_fedbuff", {"name": "fedbuff", "alpha": 0.5}, "algorithm.alpha", "not fedbuff"),
    ("buffer_for_fedasync", {"name": "fedasync", "buffer_size": 4}, "algorithm.buffer_size", "only applies to algorithm.name fedbuff"),
    ("compass_for_fedasync", {"name": "fedasync", "compass": {"min_steps": 1}}, "algorithm.compass", "fedcompass"),
    ("staleness_for_fedadam", {"name": "fedadam", "staleness": {"function": "constant"}}, "algorithm.staleness",
     "fedasync, fedbuff or fedcompass"),
    ("max_staleness_for_fedavg", {"max_staleness": 3}, "algorithm.max_staleness", "fedasync, fedbuff or fedcompass"),
    ("deadline_async", {"name": "fedasync", "round_deadline": 60}, "algorithm.round_deadline", "synchronous-round option"),
    ("late_updates_async", {"name": "fedbuff", "late_updates": "next_round"}, "algorithm.late_updates",
     "does not apply to the asynchronous algorithm fedbuff"),
    ("participation_async", {"name": "fedcompass", "participation": 0.5}, "algorithm.participation",
     "synchronous-round option"),
    ("compass_min_above_max", {"name": "fedcompass", "compass": {"min_steps": 6, "max_steps": 5}},
     "algorithm.compass.min_steps", "above algorithm.compass.max_steps (5)"),
    ("compass_min_above_local_steps", {"name": "fedcompass", "compass": {"min_steps": 11}},
     "algorithm.compass.min_steps", "above the most local steps 10"),
    ("alpha_zero", {"name": "fedasync", "alpha": 0}, "algorithm.alpha", "greater than 0"),
    ("alpha_above_one", {"name": "fedcompass", "alpha": 1.5}, "algorithm.alpha", "less than or equal to 1"),
    ("max_staleness_negative", {"name": "fedasync", "max_staleness": -1}, "algorithm.max_staleness", "greater than or equal to 0"),
    ("buffer_zero", {"name": "fedbuff", "buffer_size": 0}, "algorithm.buffer_size", "greater than 0"),
    ("unknown_function", {"name": "fedbuff", "staleness": {"function": "exponential"}}, "algorithm.staleness.function",
     "'constant', 'polynomial' or 'hinge'"),
    ("staleness_a_zero", {"name": "fedbuff", "staleness": {"a": 0}}, "algorithm.staleness.a", "greater than 0"),
    ("staleness_b_negative", {"name": "fedasync", "staleness": {"b": -1}}, "algorithm.staleness.b", "greater than or equal to 0"),
    ("latest_time_factor_one", {"name": "fedcompass", "compass": {"latest_time_factor": 1.0}},
     "algorithm.compass.latest_time_factor", "greater than 1"),
    ("speed_momentum_zero", {"name": "fedcompass", "compass": {"speed_momentum": 0}}, "algorithm.compass.speed_momentum",
     "greater than 0"),
    ("compass_typo", {"name": "fedcompass", "compass": {"max_step": 5}}, "algorithm.compass.max_step", "unknown key"),
]


@pytest.mark.parametrize(("algorithm", "key", "fragment"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_async_option_names_key_and_file(project: Path, algorithm: dict[str, Any], key: str, fragment: str) -> None:
    path = write(project, algorithm)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == key
    assert info.value.file == str(path)
    message = str(info.value)
    assert f"{path}: {key}: " in message
    assert fragment in message


@pytest.mark.parametrize("name", ["fedavg", "fedadam", *ASYNC_ALGORITHMS])
def test_a_recorded_experiment_validates_again(project: Path, name: str) -> None:
    """The run directory records every key, defaults included; resuming re-validates that record."""
    experiment = load_experiment(write(project, {"name": name}))
    assert Experiment.model_validate(experiment.model_dump(mode="json")) == experiment
    # and a key spelled out at its default is no error, whatever the algorithm
    assert load_experiment(write(project, {"name": name, "max_staleness": 8, "alpha": None})).algorithm.name == name


def test_override_switches_to_an_async_algorithm(project: Path) -> None:
    path = write(project, {})
    experiment = load_experiment(path, ["algorithm.name=fedbuff", "algorithm.buffer_size=2"])
    assert experiment.algorithm.fedbuff_k() == 2
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["algorithm.buffer_size=2"])
    assert info.value.key == "algorithm.buffer_size"
