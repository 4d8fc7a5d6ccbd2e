"""The `privacy:` section: refused combinations name their key and reason, and `validate` prints the accountant's ε.

The ε and noise multipliers validate prints are checked against `fedhpc.privacy`'s accountant (Google's
dp-accounting) for the same schedule, so what validate promises is what the run records.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from fedhpc.cli import app
from fedhpc.config import load_experiment
from fedhpc.errors import ConfigError, ExitCode
from fedhpc.privacy import epsilon_after, noise_for_epsilon

EXAMPLE = ROOT / "examples" / "privacy" / "experiment.yaml"
QUICKSTART = ROOT / "examples" / "quickstart" / "experiment.yaml"

REFUSED = [
    (["algorithm.name=fedasync"], "algorithm.name", "no fixed denominator"),
    (["algorithm.name=fedcompass"], "algorithm.name", "no accountant applies"),
    (["algorithm.weighting=samples"], "algorithm.weighting", "must be equal with privacy, not samples"),
    (["algorithm.round_deadline=60", "algorithm.late_updates=next_round"], "algorithm.late_updates",
     "did not sample its facility"),
    (["privacy.noise_multiplier=0", "privacy.target_epsilon=5"], "privacy.target_epsilon", "infinite epsilon"),
    (["privacy.clipping.mode=adaptive", "privacy.noise_multiplier=1"], "privacy.noise_multiplier",
     "noise_multiplier < 2·σ_b = 0.2"),
    (["privacy.clipping.mode=adaptive", "privacy.noise_multiplier=0.5", "privacy.clipping.count_noise_multiplier=0.1"],
     "privacy.clipping.count_noise_multiplier", "needs noise_multiplier < 2·σ_b = 0.2"),
    (["algorithm.name=fedbuff", "privacy.clipping.mode=adaptive", "privacy.noise_multiplier=0.1"],
     "privacy.clipping.mode", "several of a server step's updates"),
    (["privacy.delta=1.5"], "privacy.delta", "less than 1"),
    (["privacy.noise_multiplier=-1"], "privacy.noise_multiplier", "greater than or equal to 0"),
    (["privacy.clipping.target_quantile=1"], "privacy.clipping.target_quantile", "less than 1"),
    (["privacy.clip_norm=1"], "privacy.clip_norm", "unknown key"),
]


@pytest.mark.parametrize(("overrides", "key", "reason"), REFUSED, ids=[case[1] + ":" + case[0][-1] for case in REFUSED])
def test_a_combination_the_accountant_cannot_cover_is_refused_at_its_key(
    tmp_path: Path, overrides: list[str], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(EXAMPLE, overrides)
    assert caught.value.key == key
    assert reason in str(caught.value)
    assert re.search(rf"--set [^:]+: {re.escape(key)}: ", str(caught.value)), "names where and which key"

    run_dir = tmp_path / "run"  # `fedhpc run` refuses it before writing anything
    result = CliRunner().invoke(app, ["run", str(EXAMPLE), "--set", f"run_dir={run_dir}",
                                      *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert key in result.output
    assert not run_dir.exists()


def test_the_quickstarts_weighting_is_refused_with_why_when_privacy_is_switched_on() -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(QUICKSTART, ["privacy.noise_multiplier=1"])
    assert f"{QUICKSTART}: algorithm.weighting: must be equal with privacy" in str(caught.value)
    assert "one facility nearly the whole average" in str(caught.value)


def test_the_privacy_example_loads_and_privacy_is_off_without_the_section() -> None:
    example = load_experiment(EXAMPLE)
    assert example.privacy is not None and example.privacy.noise_multiplier > 0
    assert example.algorithm.weighting == "equal"
    assert all(f.data.exists() for f in example.facilities)
    assert load_experiment(QUICKSTART).privacy is None


def _validate(*overrides: str) -> str:
    result = CliRunner().invoke(app, ["validate", str(EXAMPLE), *[arg for o in overrides for arg in ("--set", o)]])
    assert result.exit_code == 0, result.output
    return result.output


def test_validate_prints_the_planned_epsilon_the_calibrated_noise_and_where_the_run_would_stop() -> None:
    output = _validate("algorithm.rounds=20", "privacy.noise_multiplier=1", "privacy.target_epsilon=20")
    planned = epsilon_after(1.0, 1.0, 20, 1e-5)
    assert f"epsilon after the planned 20 rounds: {planned:.3g} at delta 1e-05" in output
    assert "sampling: every facility every round (q = 1, m = 2)" in output
    needed = noise_for_epsilon(20.0, 1.0, 20, 1e-5)
    assert f"target epsilon 20: the planned 20 rounds need noise multiplier {needed:.3g} or more" in output
    stop = re.search(r"the run stops after (\d+) of 20 rounds \(exit 6\)", output)
    assert stop is not None, output
    last = int(stop.group(1))
    assert epsilon_after(1.0, 1.0, last, 1e-5) <= 20 < epsilon_after(1.0, 1.0, last + 1, 1e-5)
    # 2 facilities, z = 1, 20 rounds: far past any meaningful epsilon, so validate says so
    assert "WARNING: epsilon" in output and "protects almost nothing; see docs/privacy.md" in output
    # the noise against the signal: std z*C/m per value, over the adapters' 7,168 values
    assert "noise: std 1 per value of the mean change; over its 7,168 trainable values a norm of about 84.7, " \
           "against a clipped mean change of at most C = 2" in output


def test_validate_accounts_poisson_sampling_and_stays_quiet_below_the_warning_bound() -> None:
    output = _validate("algorithm.participation=0.5", "privacy.noise_multiplier=5", "algorithm.rounds=3")
    assert "sampling: Poisson, each facility asked with probability q = 0.5 each round (expected m = 1 of 2" in output
    planned = epsilon_after(5.0, 0.5, 3, 1e-5)
    assert planned < 10
    assert f"epsilon after the planned 3 rounds: {planned:.3g} at delta 1e-05" in output
    assert "WARNING" not in output
    assert "privacy:" not in CliRunner().invoke(app, ["validate", str(QUICKSTART)]).output


def test_validate_accounts_fedbuff_per_server_step() -> None:
    output = _validate("algorithm.name=fedbuff", "algorithm.buffer_size=2", "privacy.noise_multiplier=4")
    assert "each server step averages K = 2 buffered updates" in output
    assert f"epsilon after the planned 3 server steps: {epsilon_after(4.0, 1.0, 3, 1e-5):.3g}" in output
