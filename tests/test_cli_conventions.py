"""The command line's conventions: --version, shell completion, --set by facility name, one rule for paths, exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT, run_fedhpc
from fedhpc.cli import app
from fedhpc.config import load_experiment
from fedhpc.errors import ConfigError, ExitCode

FEDHPC = Path(sys.executable).parent / "fedhpc"  # the console script pip installed, as a shell calls it


def _experiment(project: Path, **extra: Any) -> Path:
    """An experiment file in `project`/conf, naming its data relative to itself (``../data/...``)."""
    (project / "conf").mkdir(exist_ok=True)
    raw = {
        "name": "paths",
        "facilities": [
            {"name": "alpha", "data": "../data/alpha.jsonl", "launcher": {"kind": "local", "nprocs": 1}},
            {"name": "beta", "data": "../data/beta.jsonl", "launcher": {"kind": "local", "nprocs": 2}},
        ],
        **extra,
    }
    path = project / "conf" / "exp.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_version_prints_the_installed_distributions_version() -> None:
    result = run_fedhpc("--version", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"fedhpc {version('fedhpc')}\n"


def test_shell_completion_is_shown_installed_and_completes_commands(tmp_path: Path) -> None:
    env = {**os.environ, "SHELL": "/bin/bash", "HOME": str(tmp_path)}
    shown = subprocess.run([str(FEDHPC), "--show-completion", "bash"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "_fedhpc_completion()" in shown.stdout
    assert "complete -o default -F _fedhpc_completion fedhpc" in shown.stdout

    installed = subprocess.run([str(FEDHPC), "--install-completion", "bash"], env=env, capture_output=True,
                               text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "fedhpc.sh"
    assert script.read_text().strip() == shown.stdout.strip()
    assert str(script) in (tmp_path / ".bashrc").read_text()

    # What bash runs on <TAB> after `fedhpc sta` (the script above passes these variables).
    completed = subprocess.run([str(FEDHPC)], capture_output=True, text=True, timeout=60, env={
        **env, "_FEDHPC_COMPLETE": "complete_bash", "COMP_WORDS": "fedhpc sta", "COMP_CWORD": "1"})
    assert completed.stdout.split() == ["status"], completed.stderr


def test_set_addresses_a_facility_by_name_and_still_by_index(project: Path) -> None:
    path = _experiment(project)
    experiment = load_experiment(path, ["facilities.beta.launcher.nprocs=1", "facilities.0.launcher.nprocs=3"])
    assert [f.launcher.nprocs for f in experiment.facilities] == [3, 1]

    with pytest.raises(ConfigError) as info:  # the error at the key validation names is traced to this --set
        load_experiment(path, ["facilities.beta.launcher.nprocs=0"])
    assert info.value.file == "--set facilities.beta.launcher.nprocs=0"
    assert info.value.key == "facilities.1.launcher.nprocs"


def test_an_unknown_facility_name_exits_2_naming_the_facilities_there_are(project: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(_experiment(project)),
                                      "--set", "facilities.gamma.launcher.nprocs=1"])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "--set facilities.gamma.launcher.nprocs=1: facilities.gamma: no facility is named 'gamma'" in result.output
    assert "alpha, beta" in result.output


def test_a_set_path_resolves_against_the_cwd_and_a_file_path_against_the_file(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _experiment(project)
    first, second = tmp_path_factory.mktemp("cwd1"), tmp_path_factory.mktemp("cwd2")
    for cwd in (first, second):
        monkeypatch.chdir(cwd)
        experiment = load_experiment(path, ["run_dir=out/run", "facilities.alpha.mover.staging_dir=stage"])
        assert experiment.resolved_run_dir() == cwd / "out" / "run"
        assert experiment.facilities[0].mover.staging_dir == cwd / "stage"
        assert load_experiment(path).resolved_run_dir() == cwd / "runs" / "paths"  # the default: under the cwd
        assert experiment.facilities[1].data.resolve() == (project / "data" / "beta.jsonl").resolve()  # the file's

    monkeypatch.chdir(project)  # data/beta.jsonl exists from here, not next to the file
    set_on_command_line = load_experiment(path, ["facilities.beta.data=data/beta.jsonl"])
    assert set_on_command_line.facilities[1].data == project / "data" / "beta.jsonl"
    whole = '[{name: alpha, data: data/alpha.jsonl}]'  # a structure given with --set: its paths too
    assert load_experiment(path, [f"facilities={whole}"]).facilities[0].data == project / "data" / "alpha.jsonl"
    with pytest.raises(ConfigError) as info:  # a missing one is named where it was looked for
        load_experiment(path, ["facilities.alpha.data=data/none.jsonl"])
    assert info.value.key == "facilities.0.data" and str(project / "data" / "none.jsonl") in str(info.value)
    in_file = load_experiment(_experiment(project, run_dir="out"))
    assert in_file.resolved_run_dir() == project / "conf" / "out"


@pytest.mark.parametrize("where", ["file", "--set"])
def test_a_model_source_directory_resolves_where_it_was_written(
    project: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (project / "models" / "base").mkdir(parents=True)  # from the cwd (project), not from the file's folder
    (project / "conf" / "models" / "base").mkdir(parents=True)  # next to the file
    monkeypatch.chdir(project)
    if where == "file":
        experiment = load_experiment(_experiment(project, model={"source": "models/base"}))
        assert experiment.model.source == str(project / "conf" / "models" / "base")
    else:
        experiment = load_experiment(_experiment(project), ["model.source=models/base"])
        assert experiment.model.source == str(project / "models" / "base")
        hub = load_experiment(_experiment(project), ["model.source=HuggingFaceTB/SmolLM2-135M-Instruct"])
        assert hub.model.source == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a Hub id is no path


def test_every_exit_code_is_documented_in_the_configuration_guide_and_the_readme() -> None:
    guide = (ROOT / "docs" / "configuration.md").read_text()
    section = guide[guide.index("### Exit codes"):]
    end = section.find("\n### ", 1)
    section = section if end < 0 else section[:end]
    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        assert re.search(rf"^\| {code.value} \|", section, re.MULTILINE), f"exit code {code.value} undocumented"
        assert re.search(rf"\b{code.value}\b", readme), f"README does not mention exit code {code.value}"
