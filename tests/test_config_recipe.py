"""A recipe per facility: `facilities[i].train` over `algorithm`, `data` and `model`, as the server computes it.

What a user checks: the overrides they wrote are what the facility's jobs get, everything else is
inherited, a typo or a bad value names `facilities[i].train.<key>`, and an override the algorithm or
the model would silently ignore is refused with the reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import QUICKSTART
from fedhpc.cli import app
from fedhpc.config import load_experiment
from fedhpc.errors import ConfigError


def _experiment(project: Path, *, algorithm: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
                alpha: dict[str, Any] | None = None, beta: dict[str, Any] | None = None) -> Path:
    raw: dict[str, Any] = {
        "name": "recipes",
        "run_dir": str(project / "run"),
        "data": {"seq_len": 128},
        "algorithm": {"rounds": 2, "local_steps": 6, "lr": 1e-3, "batch_size": 4, **(algorithm or {})},
        "facilities": [
            {"name": "alpha", "data": "data/alpha.jsonl", "launcher": {"kind": "local", "nprocs": 2},
             **({"train": alpha} if alpha is not None else {})},
            {"name": "beta", "data": "data/beta.jsonl", **({"train": beta} if beta is not None else {})},
        ],
    }
    if model is not None:
        raw["model"] = model
    path = project / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_facility_overrides_its_keys_and_inherits_the_rest(project: Path):
    path = _experiment(
        project,
        algorithm={"grad_accum_steps": 2, "max_grad_norm": 1.0, "weight_decay": 0.01},
        model={"peft": "none", "full": {"activation_checkpointing": True}},
        alpha={"batch_size": 1, "grad_accum_steps": 8, "local_steps": 3, "lr": 5e-4, "seq_len": 512,
               "activation_checkpointing": False},
    )
    exp = load_experiment(path)
    alpha, beta = (exp.recipe_for(f) for f in exp.facilities)

    assert (alpha.batch_size, alpha.grad_accum_steps, alpha.ranks, alpha.global_batch) == (1, 8, 2, 16)
    assert (alpha.local_steps, alpha.local_epochs, alpha.lr, alpha.seq_len) == (3, None, 5e-4, 512)
    assert alpha.activation_checkpointing is False and alpha.model.full.activation_checkpointing is False
    assert alpha.overridden == ("batch_size", "grad_accum_steps", "local_steps", "lr", "seq_len",
                                "activation_checkpointing")
    # beta sets nothing: every key is the experiment's
    assert (beta.batch_size, beta.grad_accum_steps, beta.ranks, beta.global_batch) == (4, 2, 1, 8)
    assert (beta.local_steps, beta.lr, beta.seq_len, beta.activation_checkpointing) == (6, 1e-3, 128, True)
    assert beta.overridden == () and beta.model == exp.model and beta.data == exp.data
    # what no facility overrides is the algorithm's everywhere
    assert alpha.max_grad_norm == beta.max_grad_norm == 1.0 and alpha.weight_decay == beta.weight_decay == 0.01
    # the base model is the same: only how it is trained differs
    assert alpha.model.model_copy(update={"full": exp.model.full}) == exp.model
    assert alpha.max_tokens(3) == 3 * 16 * 512


def test_steps_or_epochs_per_facility(project: Path):
    """Alone, a facility's local_steps means steps even when the algorithm trains epochs; with local_epochs
    it is the bound."""
    exp = load_experiment(_experiment(
        project, algorithm={"local_epochs": 0.5, "local_steps": 40},
        alpha={"local_steps": 5}, beta={"local_epochs": 2.0, "local_steps": 100},
    ))
    alpha, beta = (exp.recipe_for(f) for f in exp.facilities)
    assert (alpha.local_steps, alpha.local_epochs) == (5, None)
    assert (beta.local_steps, beta.local_epochs) == (100, 2.0)
    inherited = load_experiment(_experiment(project, algorithm={"local_epochs": 0.5, "local_steps": 40}))
    assert all((inherited.recipe_for(f).local_steps, inherited.recipe_for(f).local_epochs) == (40, 0.5)
               for f in inherited.facilities)


@pytest.mark.parametrize(
    ("train", "key", "fragment"),
    [
        ({"batchsize": 2}, "facilities.0.train.batchsize", "unknown key"),
        ({"batch_size": 0}, "facilities.0.train.batch_size", "greater than 0"),
        ({"grad_accum_steps": -1}, "facilities.0.train.grad_accum_steps", "greater than 0"),
        ({"local_epochs": 0}, "facilities.0.train.local_epochs", "greater than 0"),
        ({"lr": "fast"}, "facilities.0.train.lr", "number"),
        ({"lr": float("inf")}, "facilities.0.train.lr", "finite"),
        ({"seq_len": 1 << 21}, "facilities.0.train.seq_len", "less than or equal"),
        ({"activation_checkpointing": "sometimes"}, "facilities.0.train.activation_checkpointing", "bool"),
    ],
)
def test_a_bad_override_names_its_key(project: Path, train: dict[str, Any], key: str, fragment: str):
    with pytest.raises(ConfigError) as info:
        load_experiment(_experiment(project, alpha=train))
    assert info.value.key == key
    assert fragment in str(info.value)


def test_activation_checkpointing_is_refused_under_lora_with_the_reason(project: Path):
    with pytest.raises(ConfigError) as info:
        load_experiment(_experiment(project, beta={"activation_checkpointing": False}))
    assert info.value.key == "facilities.1.train.activation_checkpointing"
    assert "model.peft is 'lora'" in str(info.value) and "model.peft: none" in str(info.value)


@pytest.mark.parametrize("key", ["local_steps", "local_epochs"])
def test_fedcompass_assigns_steps_itself(project: Path, key: str):
    with pytest.raises(ConfigError) as info:
        load_experiment(_experiment(project, algorithm={"name": "fedcompass"}, beta={key: 3}))
    assert info.value.key == f"facilities.1.train.{key}"
    assert "assigns each job its local steps" in str(info.value)
    # the rest of the recipe is the facility's to set under fedcompass too
    exp = load_experiment(_experiment(project, algorithm={"name": "fedcompass"}, beta={"lr": 3e-4, "batch_size": 1}))
    assert exp.recipe_for(exp.facilities[1]).lr == 3e-4


def test_algorithm_recipe_keys(project: Path):
    exp = load_experiment(_experiment(project, algorithm={
        "grad_accum_steps": 4, "max_grad_norm": 0.5, "weighting": "tokens",
        "lr_schedule": {"kind": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1},
    }))
    schedule = exp.algorithm.lr_schedule
    assert (schedule.kind, schedule.warmup_steps, schedule.min_lr_ratio, schedule.active) == ("cosine", 2, 0.1, True)
    assert exp.algorithm.weighting == "tokens"
    default = load_experiment(_experiment(project)).algorithm
    assert (default.grad_accum_steps, default.max_grad_norm, default.local_epochs) == (1, None, None)
    assert default.lr_schedule.kind == "constant" and not default.lr_schedule.active


@pytest.mark.parametrize(
    ("algorithm", "key", "fragment"),
    [
        ({"lr_schedule": {"kind": "cosine", "warmup_steps": 12}}, "algorithm.lr_schedule.warmup_steps",
         "never reach its peak"),
        ({"lr_schedule": {"kind": "constant", "min_lr_ratio": 0.1}}, "algorithm.lr_schedule.min_lr_ratio",
         "only applies to a decay"),
        ({"lr_schedule": {"kind": "step"}}, "algorithm.lr_schedule.kind", "'cosine'"),
        ({"lr_schedule": {"min_lr_ratio": 1.5, "kind": "linear"}}, "algorithm.lr_schedule.min_lr_ratio", "1"),
        ({"lr_schedule": {"warmup_steps": -1}}, "algorithm.lr_schedule.warmup_steps", "0"),
        ({"name": "fedcompass", "local_epochs": 1.0}, "algorithm.local_epochs", "fedcompass"),
        ({"max_grad_norm": 0}, "algorithm.max_grad_norm", "greater than 0"),
        ({"grad_accum_steps": 0}, "algorithm.grad_accum_steps", "greater than 0"),
        ({"weighting": "flops"}, "algorithm.weighting", "'tokens'"),
    ],
)
def test_bad_algorithm_recipe_keys_are_named(project: Path, algorithm: dict[str, Any], key: str, fragment: str):
    with pytest.raises(ConfigError) as info:
        load_experiment(_experiment(project, algorithm=algorithm))
    assert info.value.key == key
    assert fragment in str(info.value)


def test_overrides_through_set(project: Path):
    """`--set facilities.0.train.lr=...` reaches the recipe like a key in the file."""
    exp = load_experiment(_experiment(project), ["facilities.0.train.lr=2e-4", "facilities.1.train.seq_len=64"])
    assert exp.recipe_for(exp.facilities[0]).lr == 2e-4
    assert exp.recipe_for(exp.facilities[1]).seq_len == 64


# --- fedhpc validate -----------------------------------------------------------------------------


def _validate(*args: str) -> str:
    result = CliRunner().invoke(app, ["validate", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_validate_prints_each_facilitys_effective_recipe():
    quickstart_full = QUICKSTART.parent / "full-finetune.yaml"
    out = _validate(
        str(quickstart_full), "--set", "algorithm.max_grad_norm=1.5", "--set", "algorithm.weighting=tokens",
        "--set", "facilities.1.train.batch_size=2", "--set", "facilities.1.train.grad_accum_steps=4",
        "--set", "facilities.1.train.seq_len=48", "--set", "facilities.1.train.activation_checkpointing=false",
        "--set", "facilities.1.train.local_epochs=0.5",
    )
    alpha, beta = out.split("facility beta:")[0].split("facility alpha:")[1], out.split("facility beta:")[1]
    assert "recipe (all inherited):" in alpha
    assert "micro-batch 8 x accumulation 1 x 1 rank = 8 sequences of 96 tokens per step" in alpha
    assert "12 local steps per job" in alpha and "lr             0.0005\n" in alpha
    assert "clipping       global norm 1.5; activation checkpointing on; weighting tokens" in alpha
    assert "recipe (its own: batch_size, grad_accum_steps, local_epochs, seq_len, activation_checkpointing):" in beta
    assert "micro-batch 2 x accumulation 4 x 2 ranks = 16 sequences of 48 tokens per step" in beta
    assert "0.5 epoch(s) of its data per job, at most 12 steps" in beta
    assert "activation checkpointing off" in beta
    # the memory plan reads the same recipe: beta's activations are for its own micro-batch and seq_len
    assert "seq 96 x micro-batch 8, each layer recomputed" in out and "seq 48 x micro-batch 2, no recomputation" in out


def test_validate_shows_the_lr_each_facility_starts_and_ends_its_first_and_last_round_with():
    """quickstart: 3 rounds of 12 steps = 36 federation steps; warm-up 5, then cosine to 0.1 × peak.

    round 1 starts at peak·1/6 (warm-up); round 3's last step sits at 24 + 12·11/12 = 35, near the floor.
    """
    out = _validate(str(QUICKSTART), "--set", "algorithm.lr_schedule.kind=cosine",
                    "--set", "algorithm.lr_schedule.warmup_steps=5", "--set", "algorithm.lr_schedule.min_lr_ratio=0.1",
                    "--set", "facilities.1.train.lr=0.001")
    assert ("0.005 peak; 5 warm-up steps then cosine to 0.1 x peak over 36 federation steps: "
            "round 1 0.000833 -> ") in out
    assert "0.001 peak; 5 warm-up steps then cosine to 0.1 x peak over 36 federation steps: round 1 0.000167 -> " in out
    peak, floor = 0.005, 0.1
    progress = (35 - 5) / (36 - 5)
    last = peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    assert f"round 3 {peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 19 / 31))):.3g} -> {last:.3g}" in out
