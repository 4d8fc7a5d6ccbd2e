"""Every example experiment loads, and each algorithm has one under examples/algorithms/."""

from __future__ import annotations

import runpy

import pytest
import yaml

from conftest import ROOT
from fedhpc.config import ExchangeConfig, ModelConfig, load_experiment

ALGORITHMS = ROOT / "examples" / "algorithms"


@pytest.mark.parametrize("path", sorted(ALGORITHMS.glob("*.yaml")), ids=lambda p: p.stem)
def test_algorithm_example_loads_and_names_its_algorithm(path):
    experiment = load_experiment(path)
    assert experiment.name == path.stem
    assert all(f.data.exists() for f in experiment.facilities)


def test_every_algorithm_has_an_example():
    names = {load_experiment(path).algorithm.name for path in ALGORITHMS.glob("*.yaml")}
    assert names == {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedasync", "fedbuff", "fedcompass"}
    assert any(load_experiment(path).algorithm.proximal_mu > 0 for path in ALGORITHMS.glob("*.yaml"))


def test_simulation_scenario_loads_once_its_data_is_generated(tmp_path):
    scenario = ROOT / "examples" / "simulate" / "scenario.yaml"
    copy = tmp_path / "scenario.yaml"
    copy.write_text(scenario.read_text())
    runpy.run_path(str(scenario.parent / "make_data.py"), run_name="not_main")["main"](tmp_path / "data")
    experiment = load_experiment(copy)
    assert {f.launcher.kind for f in experiment.facilities} == {"simulated"}
    sizes = [sum(1 for _ in f.data.open()) for f in experiment.facilities]
    assert max(sizes) == 10 * min(sizes)


def test_run_refuses_a_simulated_scenario_and_writes_nothing(tmp_path):
    from conftest import run_fedhpc

    scenario = ROOT / "examples" / "simulate" / "scenario.yaml"
    copy = tmp_path / "scenario.yaml"
    copy.write_text(scenario.read_text())
    runpy.run_path(str(scenario.parent / "make_data.py"), run_name="not_main")["main"](tmp_path / "data")
    result = run_fedhpc("run", str(copy), "--set", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "fedhpc simulate" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_globus_example_loads_offline_with_its_facilities_remote():
    """Its data paths are at the facilities, so they are taken as given; every UUID is checked."""
    experiment = load_experiment(ROOT / "examples" / "globus" / "experiment.yaml")
    kinds = {(f.launcher.kind, f.mover.kind) for f in experiment.facilities}
    assert kinds == {("globus-compute", "globus-transfer")}
    assert all(f.remote and f.data.is_absolute() for f in experiment.facilities)


def test_the_full_finetuning_quickstart_shards_beta_and_sends_bf16_deltas():
    experiment = load_experiment(ROOT / "examples" / "quickstart" / "full-finetune.yaml")
    assert experiment.model.peft == "none" and experiment.model.full.sharding == "auto"
    assert (experiment.exchange.update_form, experiment.exchange.update_dtype) == ("delta", "bfloat16")
    assert experiment.facility("beta").launcher.nprocs == 2  # FSDP needs more than one rank


def test_the_full_finetuning_chem_demo_trains_the_lora_demos_facilities_on_the_same_data():
    """Its data is built by `make demo`, so only the sections it changes are validated here. Its facilities
    run per-round jobs with perlmutter on 2 ranks (FSDP); their names, data and the evaluation are the demo's."""
    chem = ROOT / "examples" / "chem"
    lora, full = (yaml.safe_load((chem / name).read_text()) for name in ("experiment.yaml", "full-finetune.yaml"))
    model, exchange = ModelConfig.model_validate(full["model"]), ExchangeConfig.model_validate(full["exchange"])
    assert model.peft == "none" and model.source == lora["model"]["source"]
    assert exchange.update_form == "delta"
    def where(facilities: list[dict]) -> list[tuple[str, str]]:
        return [(facility["name"], facility["data"]) for facility in facilities]

    assert where(full["facilities"]) == where(lora["facilities"]) and full["evaluation"] == lora["evaluation"]
    assert [f["launcher"]["nprocs"] for f in full["facilities"]] == [1, 2, 1]
