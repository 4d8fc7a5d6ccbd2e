"""The experiment file: what a user sees when it is right, and when it is wrong.

Every bad file must fail at load time with a `ConfigError` that names the file
and the dotted key to edit, and the CLI must turn it into exit code 2 without
creating a run directory (or anything else) on disk.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fedhpc.cli import app
from fedhpc.config import Experiment, load_experiment
from fedhpc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart" / "experiment.yaml"




def good_config(project: Path) -> dict[str, Any]:
    return {
        "name": "probe",
        "run_dir": str(project / "run"),  # absolute, so the CLI tests can assert it never appears
        "algorithm": {"rounds": 2, "min_facilities": 1},
        "facilities": [
            {"name": "alpha", "data": "data/alpha.jsonl", "launcher": {"kind": "local", "nprocs": 1}},
            {"name": "beta", "data": "data/beta.jsonl"},
        ],
    }


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _set(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


# (id, key to change in the good config, its bad value, the key the error must name)
BAD_CONFIGS = [
    ("unknown_key", "algorithm.lrr", 0.01, "algorithm.lrr"),
    ("wrong_type", "algorithm.rounds", "many", "algorithm.rounds"),
    ("missing_data", "facilities.1.data", "data/gamma.jsonl", "facilities.1.data"),
    ("no_facilities", "facilities", [], "facilities"),
    ("duplicate_names", "facilities.1.name", "alpha", "facilities.1.name"),
    ("quorum_impossible", "algorithm.min_facilities", 3, "algorithm.min_facilities"),
    ("unknown_launcher", "facilities.0.launcher.kind", "slurmm", "facilities.0.launcher.kind"),
    ("bad_facility_name", "facilities.0.name", "al pha", "facilities.0.name"),
]


def test_quickstart_example_validates():
    experiment = load_experiment(QUICKSTART)

    assert experiment.name == "quickstart"
    assert [f.name for f in experiment.facilities] == ["alpha", "beta"]
    assert [f.launcher.nprocs for f in experiment.facilities] == [1, 2]
    for facility in experiment.facilities:
        assert facility.data.is_absolute() and facility.data.is_file()
        assert facility.data.parent == QUICKSTART.parent / "data"


def test_good_config_loads(project: Path):
    experiment = load_experiment(write_config(project / "exp.yaml", good_config(project)))
    assert isinstance(experiment, Experiment)
    assert experiment.resolved_run_dir() == project / "run"


@pytest.mark.parametrize(("dotted", "value", "key"), [case[1:] for case in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_key_and_file(project: Path, dotted: str, value: Any, key: str):
    path = write_config(project / "bad.yaml", _set(good_config(project), dotted, value))

    with pytest.raises(ConfigError) as info:
        load_experiment(path)

    assert info.value.key == key
    assert info.value.file == str(path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_an_evaluation_split_typo_is_named_at_load_time_not_at_the_last_round(project: Path):
    raw = {**good_config(project), "evaluation": {"data": "data", "split": "tset"}}
    with pytest.raises(ConfigError) as info:
        load_experiment(write_config(project / "bad.yaml", raw))
    assert info.value.key == "evaluation.split" and "test_subset" in str(info.value)
    raw["evaluation"]["split"] = "test_subset"
    assert load_experiment(write_config(project / "good.yaml", raw)).evaluation.split == "test_subset"


def test_missing_required_key_is_named(project: Path):
    raw = good_config(project)
    del raw["facilities"][0]["data"]
    path = write_config(project / "bad.yaml", raw)
    with pytest.raises(ConfigError, match=r"facilities\.0\.data: required key is missing") as info:
        load_experiment(path)
    assert info.value.key == "facilities.0.data"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("name: [unclosed\n", "not valid YAML"), ("- just\n- a list\n", "top level must be a mapping")],
    ids=["not_yaml", "not_a_mapping"],
)
def test_unparseable_file(project: Path, text: str, fragment: str):
    path = project / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_experiment(path)
    assert info.value.file == str(path)


def test_missing_file(project: Path):
    with pytest.raises(ConfigError, match="cannot read the experiment file"):
        load_experiment(project / "nope.yaml")


# --- --set overrides -------------------------------------------------------------------------


def test_overrides_nested_and_list_index(project: Path):
    path = write_config(project / "exp.yaml", good_config(project))

    experiment = load_experiment(
        path,
        [
            "algorithm.rounds=7",
            "algorithm.lr=5e-4",
            "model.lora.r=4",
            "model.lora.target_modules=[q_proj, v_proj]",
            "facilities.0.launcher.nprocs=2",
            "facilities.1.launcher.nprocs=3",  # beta has no launcher section in the file
        ],
    )

    assert experiment.algorithm.rounds == 7
    assert experiment.algorithm.lr == pytest.approx(5e-4)
    assert experiment.model.lora.r == 4
    assert experiment.model.lora.target_modules == ["q_proj", "v_proj"]
    assert [f.launcher.nprocs for f in experiment.facilities] == [2, 3]


def test_override_into_empty_section(project: Path):
    raw = good_config(project)
    raw["model"] = None  # what `model:` with nothing under it parses to
    path = write_config(project / "exp.yaml", raw)
    assert load_experiment(path, ["model.dtype=bfloat16"]).model.dtype == "bfloat16"


def test_override_is_validated_like_the_file(project: Path):
    path = write_config(project / "exp.yaml", good_config(project))
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["algorithm.rounds=many"])
    assert info.value.key == "algorithm.rounds"


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("facilities.2.launcher.nprocs=2", "facilities.2", "list index below 2"),
        ("facilities.first.name=x", "facilities.first", "list index below 2"),
        ("facilities.-1.name=x", "facilities.-1", "list index below 2"),
        ("facilities.5=x", "facilities.5", "list index below 2"),
        ("algorithm.rounds.max=3", "algorithm.rounds.max", "sub-key of a plain value"),
        ("name.first.second=3", "name.first", "sub-key of a plain value"),
        ("algorithm.rounds", None, "must look like key.path=value"),
        ("=3", None, "must look like key.path=value"),
    ],
)
def test_bad_override(project: Path, override: str, key: str | None, fragment: str):
    path = write_config(project / "exp.yaml", good_config(project))
    with pytest.raises(ConfigError, match=fragment) as info:
        load_experiment(path, [override])
    assert info.value.key == key
    assert info.value.file == f"--set {override}"  # what the user must correct, not the file


# --- relative paths --------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file_not_the_cwd(project: Path, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(elsewhere)
    conf = project / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "data" / "alpha.jsonl").write_text("{}\n")
    raw = good_config(project)
    raw["run_dir"] = "runs/here"
    raw["model"] = {"source": "./models/base", "cache_dir": "cache"}
    raw["facilities"][0]["mover"] = {"kind": "filesystem", "staging_dir": "staging/alpha"}
    raw["facilities"][1]["data"] = "../data/beta.jsonl"
    path = write_config(conf / "exp.yaml", raw)

    experiment = load_experiment(path)

    assert experiment.facilities[0].data == conf / "data" / "alpha.jsonl"
    assert experiment.facilities[1].data.resolve() == (project / "data" / "beta.jsonl").resolve()
    assert experiment.resolved_run_dir() == conf / "runs" / "here"
    assert experiment.model.cache_dir == conf / "cache"
    assert Path(experiment.model.source) == conf / "models" / "base"
    assert experiment.facilities[0].mover.staging_dir == conf / "staging" / "alpha"
    assert not any(elsewhere.iterdir())


def test_data_path_relative_to_cwd_is_not_found(project: Path, monkeypatch):
    """The same relative path that exists from the cwd but not next to the file is an error."""
    conf = project / "conf"
    conf.mkdir()
    path = write_config(conf / "exp.yaml", good_config(project))  # data/alpha.jsonl: not under conf/
    monkeypatch.chdir(project)  # ...but it does exist from here
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.key == "facilities.0.data"
    assert str(conf / "data" / "alpha.jsonl") in str(info.value)


def test_relative_experiment_path(project: Path, monkeypatch):
    """`fedhpc validate exp.yaml` from the project directory: paths still resolve to that directory."""
    write_config(project / "exp.yaml", good_config(project))
    monkeypatch.chdir(project)
    experiment = load_experiment("exp.yaml")
    assert experiment.facilities[0].data == project / "data" / "alpha.jsonl"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("tiny-llama", "tiny-llama"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),  # a hub id
        ("models/base", "{project}/models/base"),  # exists next to the file: a directory
        ("./later/base", "{project}/later/base"),
        ("weights.gguf", "{project}/weights.gguf"),
        ("/abs/model", "/abs/model"),
    ],
)
def test_model_source_paths_and_hub_ids(project: Path, source: str, expected: str):
    (project / "models" / "base").mkdir(parents=True)
    raw = good_config(project)
    raw["model"] = {"source": source}
    experiment = load_experiment(write_config(project / "exp.yaml", raw))
    assert experiment.model.source == expected.format(project=project)


# --- the CLI ---------------------------------------------------------------------------------


def _snapshot(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def test_cli_validate_quickstart():
    result = CliRunner().invoke(app, ["validate", str(QUICKSTART)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "quickstart" in result.output
    assert "facility alpha" in result.output and "facility beta" in result.output


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(("dotted", "value", "key"), [case[1:] for case in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_cli_bad_config_exits_2_and_writes_nothing(
    project: Path, monkeypatch, command: str, dotted: str, value: Any, key: str
):
    path = write_config(project / "bad.yaml", _set(good_config(project), dotted, value))
    monkeypatch.chdir(project)  # so a default `runs/<name>` would land here too
    before = _snapshot(project)

    result = CliRunner().invoke(app, [command, str(path)])

    assert result.exit_code == 2, result.output
    assert key in result.output and str(path) in result.output
    assert not (project / "run").exists()
    assert _snapshot(project) == before


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_bad_set_exits_2_and_writes_nothing(project: Path, monkeypatch, command: str):
    path = write_config(project / "exp.yaml", good_config(project))
    monkeypatch.chdir(project)
    before = _snapshot(project)

    result = CliRunner().invoke(app, [command, str(path), "--set", "facilities.4.launcher.nprocs=2"])

    assert result.exit_code == 2, result.output
    assert "facilities.4" in result.output
    assert _snapshot(project) == before


def test_cli_validate_with_set(project: Path):
    path = write_config(project / "exp.yaml", good_config(project))
    result = CliRunner().invoke(
        app, ["validate", str(path), "--set", "algorithm.rounds=9", "--set", "facilities.0.launcher.nprocs=4"]
    )
    assert result.exit_code == 0, result.output
    assert "9 rounds" in result.output
    assert "facility alpha: local x4" in result.output
    assert not (project / "run").exists()
