"""Which changes to an experiment a run directory accepts on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import QUICKSTART
from fedhpc.config import load_experiment
from fedhpc.errors import RunMismatch
from fedhpc.run.rundir import check_same_experiment, experiment_document


def _recorded(**changes: object) -> dict:
    document = experiment_document(load_experiment(QUICKSTART))
    for dotted, value in changes.items():
        node = document
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return document


def test_a_key_added_by_a_newer_version_compares_as_its_default(tmp_path: Path) -> None:
    recorded = _recorded(algorithm__max_update_norm=None, checkpoint=None)
    check_same_experiment(json.dumps(recorded), load_experiment(QUICKSTART), tmp_path)


def test_raising_rounds_is_allowed_but_other_changes_are_named(tmp_path: Path) -> None:
    current = load_experiment(QUICKSTART, ["algorithm.rounds=9"])
    check_same_experiment(json.dumps(_recorded()), current, tmp_path)
    with pytest.raises(RunMismatch, match="algorithm.lr"):
        check_same_experiment(json.dumps(_recorded()), load_experiment(QUICKSTART, ["algorithm.lr=0.5"]), tmp_path)


def test_a_recorded_document_that_no_longer_validates_is_compared_as_is(tmp_path: Path) -> None:
    recorded = _recorded(algorithm__retired_option=3)
    with pytest.raises(RunMismatch, match="algorithm.retired_option"):
        check_same_experiment(json.dumps(recorded), load_experiment(QUICKSTART), tmp_path)


def test_a_rotated_token_is_no_change_even_against_a_run_recorded_before_redaction(tmp_path: Path) -> None:
    """Runs recorded by an older fedhpc hold env values verbatim; both sides compare redacted."""
    env = "facilities.0.launcher.env={HF_TOKEN: hf_old}"
    verbatim = load_experiment(QUICKSTART, [env]).model_dump(mode="json")
    recorded = experiment_document(load_experiment(QUICKSTART, [env]))
    assert recorded["facilities"][0]["launcher"]["env"] == {"HF_TOKEN": "<redacted>"}
    rotated = load_experiment(QUICKSTART, ["facilities.0.launcher.env={HF_TOKEN: hf_new}"])
    for document in (verbatim, recorded, {**verbatim, "retired_option": None}):
        check_same_experiment(json.dumps(document), rotated, tmp_path)


def test_a_new_env_variable_is_still_a_change(tmp_path: Path) -> None:
    recorded = experiment_document(load_experiment(QUICKSTART, ["facilities.0.launcher.env={HF_TOKEN: a}"]))
    changed = load_experiment(QUICKSTART, ["facilities.0.launcher.env={HF_TOKEN: a, NCCL_DEBUG: INFO}"])
    with pytest.raises(RunMismatch, match="facilities.0.launcher.env.NCCL_DEBUG"):
        check_same_experiment(json.dumps(recorded), changed, tmp_path)
