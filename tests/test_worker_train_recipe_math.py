"""The local step's arithmetic: accumulation, clipping, the learning-rate schedule, epochs.

What a user relies on, checked on real worker runs of the tiny model in fp32 (in this
process for one rank, under torchrun with gloo for two):

- k micro-batches of B accumulated into one step train exactly as one batch of k·B, on one
  rank and on two DDP or FSDP ranks, FedProx included;
- clipping uses the norm of the whole gradient: two DDP or FSDP ranks report the norm one
  process reports for the same global batch and end at the same weights;
- each step trains at the rate the federation's curve gives at its position, also with an
  optimizer kept from an earlier task (a persistent worker's);
- `local_epochs` becomes the step count it implies, capped by the server's `local_steps`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from fedhpc.config import DataConfig, FullFinetuneConfig, ModelConfig, TinyLlamaConfig
from fedhpc.exchange import ExchangeDir, LrSchedule, TrainSettings
from fedhpc.lr_schedule import learning_rate, task_learning_rates, task_positions
from fedhpc.worker.data import batches, read_examples
from fedhpc.worker.distributed import RankEnv
from fedhpc.worker.loaded import load_model
from fedhpc.worker.main import run_task
from fedhpc.worker.train import train_local_steps
from fedhpc.worker.train_recipe import epoch_steps
from tests.test_worker_run import init_global, torchrun, train_task, write_dataset

# Full fine-tuning, so the same model trains whole (1 rank), under DDP and under FSDP.
FSDP = ModelConfig(
    peft="none",
    tiny=TinyLlamaConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64),
    full=FullFinetuneConfig(activation_checkpointing=True),
)
DDP = FSDP.model_copy(update={"full": FullFinetuneConfig(sharding="ddp")})
STEPS = 3
BATCH = 8  # the global batch of every equivalence below: examples per optimizer step
CLIP = 0.05  # far below the tiny model's gradient norm, so clipping acts on every step
ATOL = 1e-5


def recipe(batch_size: int, accumulate: int = 1, **changes: object) -> TrainSettings:
    base = {"local_steps": STEPS, "lr": 1e-3, "batch_size": batch_size, "grad_accum_steps": accumulate, "seed": 0}
    return TrainSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_math")
    write_dataset(root / "data.jsonl", count=24)
    init_global(root / "global", FSDP)
    return root


def train(
    workspace: Path, name: str, settings: TrainSettings, nprocs: int = 1, model: ModelConfig = FSDP
) -> ExchangeDir:
    """One real worker task: in this process for one rank, under torchrun for more."""
    task = train_task(workspace, workspace / "global" / "r0000", name, model=model, train=settings)
    if nprocs == 1:
        run_task(task)
    else:
        result = torchrun(task, nprocs)
        assert result.returncode == 0, result.stderr[-3000:]
    return ExchangeDir(workspace / name / "update")


def assert_same_weights(actual: ExchangeDir, expected: ExchangeDir) -> None:
    for name in expected.names():
        torch.testing.assert_close(
            actual.get(name), expected.get(name), rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}"  # noqa: B023
        )


def largest_difference(a: ExchangeDir, b: ExchangeDir) -> float:
    return max(float((a.get(name) - b.get(name)).abs().max()) for name in a.names())


@pytest.fixture(scope="module")
def big_batch(workspace: Path) -> ExchangeDir:
    """The reference: one process, one micro-batch of 8 per step."""
    return train(workspace, "big", recipe(BATCH))


@pytest.fixture(scope="module")
def big_batch_clipped(workspace: Path) -> ExchangeDir:
    return train(workspace, "big-clipped", recipe(BATCH, max_grad_norm=CLIP))


# --- accumulation -------------------------------------------------------------------------------------------------


def test_four_micro_batches_of_two_train_as_one_batch_of_eight(workspace: Path, big_batch: ExchangeDir) -> None:
    accumulated = train(workspace, "accum", recipe(2, accumulate=4))
    assert_same_weights(accumulated, big_batch)
    metrics, reference = accumulated.manifest.metrics, big_batch.manifest.metrics
    assert metrics["loss"] == pytest.approx(reference["loss"], abs=1e-6)  # the step's token mean, not a micro mean
    assert metrics["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert (metrics["samples_seen"], metrics["tokens"]) == (reference["samples_seen"], reference["tokens"])
    assert metrics["samples_seen"] == STEPS * BATCH and metrics["grad_accum_steps"] == 4
    assert accumulated.manifest.local_steps == STEPS and len(metrics["loss"]) == STEPS


def test_two_ddp_ranks_accumulating_train_as_one_process(workspace: Path, big_batch: ExchangeDir) -> None:
    """2 ranks × 2 micro-batches × 2 examples: the same 8 examples a step (strided shards of one shuffle)."""
    ddp = train(workspace, "ddp-accum", recipe(2, accumulate=2), nprocs=2, model=DDP)
    assert ddp.manifest.metrics["world_size"] == 2 and ddp.manifest.metrics["sharded"] is False
    assert_same_weights(ddp, big_batch)
    assert ddp.manifest.metrics["loss"] == pytest.approx(big_batch.manifest.metrics["loss"], abs=1e-6)


@pytest.fixture(scope="module")
def big_batch_proximal(workspace: Path) -> ExchangeDir:
    return train(workspace, "prox-big", recipe(BATCH, proximal_mu=50.0))


def test_fedprox_counts_its_pull_once_per_step_when_accumulating(
    workspace: Path, big_batch: ExchangeDir, big_batch_proximal: ExchangeDir
) -> None:
    accumulated = train(workspace, "prox-accum", recipe(2, accumulate=4, proximal_mu=50.0))
    assert_same_weights(accumulated, big_batch_proximal)
    assert largest_difference(big_batch_proximal, big_batch) > 10 * ATOL  # the proximal term does act here


def test_fsdp_ranks_accumulating_with_fedprox_train_as_one_process(
    workspace: Path, big_batch_proximal: ExchangeDir
) -> None:
    """The pull goes straight into each rank's gradient shard, beside the reduce-scattered micro-batches."""
    fsdp = train(workspace, "prox-fsdp", recipe(2, accumulate=2, proximal_mu=50.0), nprocs=2)
    assert fsdp.manifest.metrics["sharded"] is True
    assert_same_weights(fsdp, big_batch_proximal)


# --- clipping -----------------------------------------------------------------------------------------------------


def test_clipping_acts_and_reports_the_norm_before_it(big_batch: ExchangeDir, big_batch_clipped: ExchangeDir) -> None:
    norms = big_batch_clipped.manifest.metrics["grad_norm"]
    assert len(norms) == STEPS and all(norm > CLIP for norm in norms), norms
    assert big_batch_clipped.manifest.metrics["max_grad_norm"] == CLIP
    assert norms[0] == pytest.approx(big_batch.manifest.metrics["grad_norm"][0], rel=1e-6)  # same start, same norm
    assert largest_difference(big_batch_clipped, big_batch) > 10 * ATOL  # so the comparisons below can tell


@pytest.mark.parametrize(("model", "accumulate"), [(DDP, 1), (FSDP, 2)], ids=["ddp", "fsdp-accumulating"])
def test_two_ranks_clip_the_whole_gradient_as_one_process_does(
    workspace: Path, big_batch_clipped: ExchangeDir, model: ModelConfig, accumulate: int
) -> None:
    """Under FSDP each rank holds only its rows of the gradient; the norm must still be the whole one."""
    name = f"clip-{model.full.sharding}"
    two = train(workspace, name, recipe(BATCH // 2 // accumulate, accumulate, max_grad_norm=CLIP), 2, model)
    assert two.manifest.metrics["sharded"] is (model.full.sharding != "ddp")
    reference = big_batch_clipped.manifest.metrics["grad_norm"]
    assert two.manifest.metrics["grad_norm"] == pytest.approx(reference, rel=1e-5)
    assert_same_weights(two, big_batch_clipped)


# --- the learning-rate schedule -----------------------------------------------------------------------------------

COSINE = LrSchedule(kind="cosine", warmup_steps=4, total_steps=24, min_lr_ratio=0.1)


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_each_curve_warms_up_peaks_and_ends_where_it_says(kind: str) -> None:
    schedule = LrSchedule(kind=kind, warmup_steps=4, total_steps=24, min_lr_ratio=0.1)
    peak = 2e-4
    assert learning_rate(schedule, peak, 0) == pytest.approx(peak / 5)  # the first step already trains
    assert learning_rate(schedule, peak, 2) == pytest.approx(peak * 3 / 5)
    assert learning_rate(schedule, peak, 4) == pytest.approx(peak)
    halfway = {"constant": peak, "linear": peak * (0.1 + 0.9 * 0.5), "cosine": peak * (0.1 + 0.9 * 0.5)}
    assert learning_rate(schedule, peak, 14) == pytest.approx(halfway[kind])
    quarter = {"constant": peak, "linear": peak * (0.1 + 0.9 * 0.75),
               "cosine": peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))}  # fmt: skip
    assert learning_rate(schedule, peak, 9) == pytest.approx(quarter[kind])
    end = peak if kind == "constant" else peak * 0.1
    assert learning_rate(schedule, peak, 24) == pytest.approx(end)
    assert learning_rate(schedule, peak, 100) == pytest.approx(end)  # clamped past the planned total
    assert learning_rate(None, peak, 7) == peak


def test_facilities_with_different_step_counts_cover_the_same_segment_of_the_curve() -> None:
    """Round 2 of L = 6: one facility trains 3 steps, another 12; both span federation steps [6, 12)."""
    slow = TrainSettings(local_steps=3, lr=1e-3, batch_size=1, schedule=COSINE, schedule_start=6, schedule_span=6)
    fast = slow.model_copy(update={"local_steps": 12})
    assert task_positions(slow, 3) == [6, 8, 10]
    assert task_positions(fast, 12) == pytest.approx([6 + k / 2 for k in range(12)])
    assert task_positions(fast, 12)[::4] == pytest.approx(task_positions(slow, 3))
    assert task_positions(slow.model_copy(update={"schedule_span": None}), 3) == [6, 7, 8]
    rates = task_learning_rates(fast, 12)
    assert rates == sorted(rates, reverse=True) and rates[0] < 1e-3  # past the warm-up, decaying


def test_a_task_trains_at_the_rates_its_segment_of_the_curve_gives(workspace: Path) -> None:
    settings = recipe(4, local_steps=4, schedule=COSINE, schedule_start=2, schedule_span=8)
    update = train(workspace, "scheduled", settings)
    expected = [learning_rate(COSINE, 1e-3, p) for p in (2, 4, 6, 8)]
    assert update.manifest.metrics["lr"] == pytest.approx(expected)
    assert expected[1] == pytest.approx(1e-3)  # warm-up ends at step 4, then the decay
    assert expected[0] < expected[1] and expected[1] > expected[2] > expected[3]


@pytest.mark.parametrize("position", [0.0, 14.0])
def test_the_optimizer_steps_with_the_scheduled_rate(workspace: Path, position: float) -> None:
    """Evidence from the weights themselves: AdamW's first step moves each weight by lr·g/(|g| + ε), i.e. by lr."""
    settings = recipe(4, local_steps=1, schedule=COSINE, schedule_start=position)
    update = train(workspace, f"one-step-{position:g}", settings)
    base = ExchangeDir(workspace / "global" / "r0000")
    moved = max(float((update.get(name) - base.get(name)).abs().max()) for name in base.names())
    assert moved == pytest.approx(learning_rate(COSINE, 1e-3, position), rel=1e-3)


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that notes the learning rate it steps with."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.rates: list[float] = []

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        self.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


def test_a_kept_optimizer_follows_the_curve_across_tasks(workspace: Path) -> None:
    """A persistent worker's optimizer (model.keep_optimizer_state) carries its moments, not a stale rate."""
    loaded = load_model(FSDP)
    examples = read_examples(workspace / "data.jsonl")
    micro = batches(examples, loaded.tokenizer, DataConfig(seq_len=64), 4)
    optimizer = RecordingAdamW([p for p in loaded.model.parameters() if p.requires_grad], lr=1.0)
    for round_ in (1, 2):  # L = 3 federation steps per round
        settings = recipe(4, schedule=COSINE, schedule_start=(round_ - 1) * 3)
        result = train_local_steps(loaded.model, micro, settings, torch.device("cpu"), RankEnv(), torch.float32,
                                   loss=loaded.loss, optimizer=optimizer)  # fmt: skip
        assert result.optimizer is optimizer
    assert optimizer.rates == pytest.approx([learning_rate(COSINE, 1e-3, p) for p in range(6)])
    assert all(int(state["step"]) == 6 for state in optimizer.state.values())  # moments kept across both tasks


# --- epochs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "examples", "batch", "accumulate", "ranks", "bound", "expected"),
    [(1, 24, 2, 2, 1, 50, 6), (1, 25, 2, 2, 1, 50, 7), (2, 100, 4, 2, 2, 50, 13), (0.5, 10, 8, 1, 1, 50, 1),
     (3, 24, 2, 2, 1, 10, 10), (None, 24, 2, 2, 1, 10, 10)],
)  # fmt: skip
def test_epochs_become_steps_within_the_servers_bound(
    epochs: float | None, examples: int, batch: int, accumulate: int, ranks: int, bound: int, expected: int
) -> None:
    settings = TrainSettings(local_steps=bound, local_epochs=epochs, lr=1e-3, batch_size=batch,
                             grad_accum_steps=accumulate)  # fmt: skip
    assert epoch_steps(settings, examples, ranks) == expected


def test_an_epoch_task_reports_the_steps_it_took(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    one_epoch = train(workspace, "epoch", recipe(2, accumulate=3, local_steps=10, local_epochs=1))
    assert one_epoch.manifest.local_steps == 4  # ⌈24 examples / (2 × 3)⌉
    assert len(one_epoch.manifest.metrics["loss"]) == 4 and one_epoch.manifest.metrics["samples_seen"] == 24
    with caplog.at_level(logging.WARNING, logger="fedhpc.worker.train_recipe"):
        capped = train(workspace, "epochs-capped", recipe(2, accumulate=3, local_steps=5, local_epochs=2))
    assert capped.manifest.local_steps == 5
    assert "at most local_steps 5" in caplog.text
