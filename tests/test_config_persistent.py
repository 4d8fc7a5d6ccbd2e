"""`mode: persistent`, its `persistent:` section and the local launcher's walltime: what a user sees when wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedhpc.config import PersistentConfig, load_experiment
from fedhpc.errors import ConfigError
from test_config import good_config, write_config


def _with_alpha(project: Path, **alpha: Any) -> Path:
    raw = good_config(project)
    raw["facilities"][0].update(alpha)
    return write_config(project / "exp.yaml", raw)


def test_defaults_are_per_round_and_persistent_defaults_are_sane(project: Path) -> None:
    experiment = load_experiment(_with_alpha(project))
    alpha = experiment.facilities[0]
    assert alpha.mode == "per-round"
    assert alpha.persistent == PersistentConfig(heartbeat_interval=5, heartbeat_timeout=60, idle_timeout=600,
                                                max_restarts=2)
    assert alpha.launcher.walltime is None


def test_a_persistent_facility_loads(project: Path) -> None:
    path = _with_alpha(project, mode="persistent", persistent={"heartbeat_interval": 1, "heartbeat_timeout": 3},
                       launcher={"kind": "local", "walltime": 3600})
    alpha = load_experiment(path).facilities[0]
    assert (alpha.mode, alpha.persistent.heartbeat_timeout, alpha.launcher.walltime) == ("persistent", 3.0, 3600.0)


@pytest.mark.parametrize(("timeout", "interval"), [(5, 5), (2, 5)])
def test_heartbeat_timeout_must_exceed_the_interval(project: Path, timeout: float, interval: float) -> None:
    path = _with_alpha(project, mode="persistent",
                       persistent={"heartbeat_interval": interval, "heartbeat_timeout": timeout})
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == "facilities.0.persistent.heartbeat_timeout"
    message = str(info.value)
    assert "must exceed heartbeat_interval" in message and f"({interval:g} s)" in message and str(path) in message


def test_persistent_mode_with_the_simulated_launcher_is_refused(project: Path) -> None:
    path = _with_alpha(project, mode="persistent", launcher={"kind": "simulated"})
    with pytest.raises(ConfigError, match="launcher kind 'simulated'") as info:
        load_experiment(path)
    assert info.value.key == "facilities.0.mode"


@pytest.mark.parametrize(
    ("alpha", "key"),
    [
        ({"mode": "persistant"}, "facilities.0.mode"),
        ({"persistent": {"max_restarts": -1}}, "facilities.0.persistent.max_restarts"),
        ({"persistent": {"idle_timeout": 0}}, "facilities.0.persistent.idle_timeout"),
        ({"persistent": {"heartbeat": 5}}, "facilities.0.persistent.heartbeat"),
        ({"launcher": {"kind": "local", "walltime": 0}}, "facilities.0.launcher.walltime"),
    ],
    ids=["mode_typo", "negative_restarts", "zero_idle", "unknown_key", "zero_walltime"],
)
def test_bad_persistent_settings_name_their_key(project: Path, alpha: dict[str, Any], key: str) -> None:
    path = _with_alpha(project, **alpha)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == key, str(info.value)
