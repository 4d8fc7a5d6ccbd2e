"""The server's gate for an update's `metrics.tokens`, its weight under `weighting: tokens`.

Like `num_samples` and `local_steps`, `tokens` is what the facility says about itself, so a facility
could claim 10⁹ and outweigh everyone. The intake holds it to what the claimed steps of the facility's
own recipe can hold (micro-batch × accumulation × ranks × seq_len per step), and the accepted update
carries it to the aggregator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedhpc.config import load_experiment
from fedhpc.errors import UpdateRejected
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.facility.movers.filesystem import FilesystemMover
from fedhpc.run.context import RunContext
from fedhpc.run.intake import Intake
from fedhpc.run.launches import Facility
from fedhpc.run.rundir import RunDir

FINGERPRINT = "sha256:" + "cd" * 32
GLOBAL = {"w": torch.zeros(2, 3)}


def _intake(tmp_path: Path, train: dict[str, Any]) -> tuple[Intake, RunDir]:
    data = tmp_path / "alpha.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(5)))
    entry = {"name": "alpha", "data": "alpha.jsonl", "launcher": {"kind": "local", "nprocs": 2}, "train": train}
    experiment_file = tmp_path / "experiment.yaml"
    experiment_file.write_text(json.dumps({"name": "tokens", "data": {"seq_len": 32}, "facilities": [entry]}))
    experiment = load_experiment(experiment_file)
    run_dir = RunDir(tmp_path / "run")
    write_state_dict(run_dir.global_dir(0), GLOBAL, ExchangeMeta(kind="global", round=0, base_fingerprint=FINGERPRINT))
    config = experiment.facilities[0]
    mover = FilesystemMover(config.mover, run_dir.default_staging("alpha"))
    # Verification needs no launcher, event log, progress view or clock.
    facilities = {"alpha": Facility(config, None, mover, experiment.recipe_for(config))}  # type: ignore[arg-type]
    context = RunContext(run_dir, None, None, None, None)  # type: ignore[arg-type]
    return Intake(context, facilities, FINGERPRINT, None), run_dir


def _publish(path: Path, tokens: int, steps: int) -> Path:
    meta = ExchangeMeta(kind="update", round=1, facility="alpha", based_on_round=0, num_samples=5, local_steps=steps,
                        base_fingerprint=FINGERPRINT, metrics={"loss": [1.0] * steps, "tokens": tokens})
    write_state_dict(path, {"w": torch.ones(2, 3)}, meta)
    return path


# alpha: micro-batch 3 × accumulation 2 × 2 ranks × seq_len 16 = 192 tokens per optimizer step at most
TRAIN = {"batch_size": 3, "grad_accum_steps": 2, "seq_len": 16}


def test_tokens_up_to_what_the_recipe_holds_are_accepted_and_reach_the_update(tmp_path: Path):
    intake, run_dir = _intake(tmp_path, TRAIN)
    update = intake.verified(_publish(tmp_path / "u", tokens=3 * 192, steps=3), "alpha", 1,
                             ExchangeDir(run_dir.global_dir(0)), asked_steps=3)
    assert (update.tokens, update.local_steps) == (576, 3)


def test_more_tokens_than_the_claimed_steps_can_hold_are_rejected_with_the_arithmetic(tmp_path: Path):
    intake, run_dir = _intake(tmp_path, TRAIN)
    with pytest.raises(UpdateRejected) as info:
        intake.verified(_publish(tmp_path / "u", tokens=3 * 192 + 1, steps=3), "alpha", 1,
                        ExchangeDir(run_dir.global_dir(0)), asked_steps=4)
    assert info.value.reason == "tokens"
    message = str(info.value)
    assert "metrics.tokens 577, over the 576" in message
    assert "micro-batch 3 × grad_accum_steps 2 × 2 rank(s) × seq_len 16" in message


def test_the_bound_is_the_facilitys_own_not_the_experiments(tmp_path: Path):
    """With the experiment's seq_len 32 the same claim would pass; the facility's 16 is what its jobs train."""
    intake, run_dir = _intake(tmp_path, {"seq_len": 16})  # micro-batch 4 (algorithm's default), 1 step: 128 at most
    with pytest.raises(UpdateRejected, match="over the 128"):
        intake.verified(_publish(tmp_path / "u", tokens=200, steps=1), "alpha", 1,
                        ExchangeDir(run_dir.global_dir(0)), asked_steps=1)
    (tmp_path / "wide").mkdir()
    wide, run_dir = _intake(tmp_path / "wide", {"seq_len": 32})  # 4 × 2 ranks × 32 = 256
    assert wide.verified(_publish(tmp_path / "v", tokens=200, steps=1), "alpha", 1,
                         ExchangeDir(run_dir.global_dir(0)), asked_steps=1).tokens == 200


def test_the_per_step_lr_and_grad_norm_are_held_to_the_steps_not_to_the_size_of_other_metrics(tmp_path: Path):
    """A long job's lr and grad_norm lists (one number per step) are the worker's, not free-form extras."""
    intake, run_dir = _intake(tmp_path, {})
    steps = 6000  # ~120 KB of lr values: over the 64 KiB that unknown metrics may take
    lrs = [1e-3 * (1 - k / steps) for k in range(steps)]
    meta = ExchangeMeta(kind="update", round=1, facility="alpha", based_on_round=0, num_samples=5, local_steps=steps,
                        base_fingerprint=FINGERPRINT,
                        metrics={"loss": [1.0] * steps, "tokens": 10, "lr": lrs, "grad_norm": [0.123456789] * steps})
    write_state_dict(tmp_path / "long", {"w": torch.ones(2, 3)}, meta)
    global_ = ExchangeDir(run_dir.global_dir(0))
    assert intake.verified(tmp_path / "long", "alpha", 1, global_, asked_steps=steps).local_steps == steps

    for bad, fragment in (({"lr": [1e-3] * 3}, "metrics.lr has 3 values for 2 local steps"),
                          ({"grad_norm": [float("nan")]}, "metrics.grad_norm must be a list of finite numbers")):
        path = tmp_path / f"bad-{len(fragment)}"
        write_state_dict(path, {"w": torch.ones(2, 3)}, ExchangeMeta(
            kind="update", round=1, facility="alpha", based_on_round=0, num_samples=5, local_steps=2,
            base_fingerprint=FINGERPRINT, metrics={"loss": [1.0, 1.0], **bad}))
        with pytest.raises(UpdateRejected, match=fragment) as info:
            intake.verified(path, "alpha", 1, global_, asked_steps=2)
        assert info.value.reason == "bad_metrics"
