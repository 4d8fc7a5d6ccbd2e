"""Example-level DP (DP-SGD with Opacus) in the worker: per-example gradients, clipping, noise, the facility ledger.

On a tiny seeded Llama with LoRA, as the quickstart trains it. Per-example gradients are checked against
one backward pass per example; a step's update against the clipped sum those give; the noise's spread
against σC/B on a step with nothing sampled; ε against Opacus's accountant fed the same schedule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedhpc.config import ModelConfig
from fedhpc.config.example_privacy import ExamplePrivacyConfig
from fedhpc.config.loading import load_experiment
from fedhpc.errors import ConfigError, ExampleBudgetSpent
from fedhpc.exchange import TrainSettings
from fedhpc.train_examples import Example
from fedhpc.worker.data import Tokenized, collate, encode_example
from fedhpc.worker.dp_ledger import FacilityLedger
from fedhpc.worker.dp_sgd import PerExampleLoss, sample_rate, train_dp_steps
from fedhpc.worker.loss import CausalLMLoss
from fedhpc.worker.model import add_trainable, build_base_model
from conftest import QUICKSTART

CPU = torch.device("cpu")


@pytest.fixture
def lora_model():
    config = ModelConfig(source="tiny-llama", dtype="float32", peft="lora", tiny={"hidden_size": 32, "num_layers": 1,
                         "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64})  # fmt: skip
    base = build_base_model(config)
    model = add_trainable(base.model, config)
    with torch.no_grad():  # B starts at zero; give the adapters a state where every gradient is non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model, base.tokenizer


def _examples(tokenizer, count: int) -> list[Tokenized]:
    words = ["alpha", "bravo", "charlie-delta", "echo", "foxtrot golf", "hotel", "india juliet kilo", "lima"]
    items = [encode_example(tokenizer, Example(f"Shout {w}:", w.upper() * (1 + i % 3)), 64) for i, w in
             enumerate(words[:count])]  # fmt: skip
    assert all(item is not None for item in items)
    return items  # type: ignore[return-value]


def _params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _per_example_grads(model, items: list[Tokenized], pad_id: int) -> list[list[torch.Tensor]]:
    """One backward pass per example, alone in its batch: the reference the per-example gradients must match."""
    loss = PerExampleLoss(model)
    grads = []
    for item in items:
        model.zero_grad()
        batch = collate([[item]], pad_id, packed=False)
        loss(**batch.model_inputs(CPU)).sum().backward()
        grads.append([p.grad.detach().clone() for p in _params(model)])
    model.zero_grad()
    return grads


def test_per_example_gradients_of_lora_match_one_backward_per_example(lora_model) -> None:
    model, tokenizer = lora_model
    items = _examples(tokenizer, 4)  # of different lengths: the batch is padded, the references are not
    reference = _per_example_grads(model, items, tokenizer.pad_token_id)
    # each row's loss is that example's own token mean: what the worker's loss gives for it alone
    batch = collate([[item] for item in items], tokenizer.pad_token_id, packed=False).model_inputs(CPU)
    together = PerExampleLoss(model)(**batch)
    for i, item in enumerate(items):
        alone = collate([[item]], tokenizer.pad_token_id, packed=False).model_inputs(CPU)
        torch.testing.assert_close(together[i], CausalLMLoss(model)(**alone), atol=1e-5, rtol=1e-5)
    net = GradSampleModule(PerExampleLoss(model), batch_first=True, loss_reduction="sum")
    try:
        batch = collate([[item] for item in items], tokenizer.pad_token_id, packed=False)
        net(**batch.model_inputs(CPU)).sum().backward()
        for k, p in enumerate(_params(model)):
            assert p.grad_sample.shape == (4, *p.shape)
            for i in range(4):
                torch.testing.assert_close(p.grad_sample[i], reference[i][k], atol=1e-6, rtol=1e-4)
    finally:
        net.cleanup()
    assert not any(hasattr(p, "grad_sample") for p in _params(model))  # the model leaves as it came


def _settings(**keys) -> TrainSettings:
    return TrainSettings(**{"local_steps": 1, "lr": 1.0, "batch_size": 2, "grad_accum_steps": 2, **keys})


def test_a_step_is_the_clipped_per_example_sum_over_the_expected_batch(lora_model) -> None:
    """q = 1 (4 rows expected, 4 examples) in 2 micro-batches of 2; SGD at lr 1 makes the step the gradient."""
    model, tokenizer = lora_model
    items = _examples(tokenizer, 4)
    clip = 1e-3
    reference = _per_example_grads(model, items, tokenizer.pad_token_id)
    norms = [torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) for grads in reference]
    assert min(norms) > 10 * clip  # every example is clipped
    before = [p.detach().clone() for p in _params(model)]
    privacy = ExamplePrivacyConfig(noise_multiplier=1e-6, max_grad_norm=clip)
    result = train_dp_steps(
        model, list(items), tokenizer.pad_token_id, _settings(), privacy, CPU, torch.float32, 1,
        optimizer=torch.optim.SGD(_params(model), lr=1.0), noise=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert result.samples_seen == 4 and result.losses == []  # the loss is not released by default
    for k, (p, start) in enumerate(zip(_params(model), before, strict=True)):
        clipped = sum(grads[k] * min(1.0, clip / float(norm)) for grads, norm in zip(reference, norms, strict=True))
        torch.testing.assert_close(start - p.detach(), clipped / 4, atol=1e-8, rtol=1e-3)
    # one example's whole contribution, whatever its gradient, is at most C / B
    total = torch.linalg.vector_norm(torch.stack([(s - p.detach()).norm() for p, s in zip(_params(model), before)]))
    assert float(total) <= clip * 1.0001


def test_the_noise_of_a_step_with_nothing_sampled_has_std_sigma_c_over_b(lora_model) -> None:
    model, tokenizer = lora_model
    before = [p.detach().clone() for p in _params(model)]
    sigma, clip = 2.0, 0.5
    privacy = ExamplePrivacyConfig(noise_multiplier=sigma, max_grad_norm=clip)
    # 40 examples that did not tokenize: every Poisson batch is empty, so each of the 5 steps is noise alone
    train_dp_steps(
        model, [None] * 40, tokenizer.pad_token_id, _settings(), privacy, CPU, torch.float32, 5,
        optimizer=torch.optim.SGD(_params(model), lr=1.0),
    )  # fmt: skip
    moved = torch.cat([(s - p.detach()).reshape(-1) for p, s in zip(_params(model), before, strict=True)])
    assert moved.numel() > 1500  # 5 × that many draws: their std within 5% is over 6 standard errors
    expected = sigma * clip / 4 * 5**0.5  # expected batch 2 × 2; 5 independent steps
    assert abs(float(moved.std()) / expected - 1) < 0.05
    assert abs(float(moved.mean())) < 4 * expected / moved.numel() ** 0.5


def test_release_loss_reports_each_step_and_training_lowers_it(lora_model) -> None:
    model, tokenizer = lora_model
    items = _examples(tokenizer, 8)
    privacy = ExamplePrivacyConfig(noise_multiplier=0.3, max_grad_norm=1.0, release_loss=True)
    result = train_dp_steps(
        model, list(items), tokenizer.pad_token_id, _settings(lr=0.02, batch_size=4, grad_accum_steps=1), privacy,
        CPU, torch.float32, 30, sampling=torch.Generator().manual_seed(3), noise=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert 25 <= len(result.losses) <= 30 and len(result.grad_norms) == 30  # a step with no rows reports no loss
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5 - 0.3


def test_sample_rate_is_the_expected_batch_over_the_examples() -> None:
    assert sample_rate(_settings(batch_size=8, grad_accum_steps=2), 240) == pytest.approx(16 / 240)
    assert sample_rate(_settings(batch_size=8, grad_accum_steps=2), 10) == 1.0


def test_the_ledger_sums_every_round_and_matches_opacus(tmp_path: Path) -> None:
    path = tmp_path / "staging" / "example_privacy" / "alpha" / "accountant.json"
    schedule = [(1, 1.1, 8 / 240, 12), (2, 1.1, 8 / 240, 12), (3, 0.9, 8 / 200, 5)]
    for round_, sigma, q, steps in schedule:
        ledger = FacilityLedger.load(path, "rdp")  # a fresh process each round, as each job is
        ledger.record(round_, sigma, q, steps)
    ledger = FacilityLedger.load(path, "rdp")
    assert ledger.rounds == [1, 2, 3]
    direct = RDPAccountant()
    for _, sigma, q, steps in schedule:
        for _ in range(steps):
            direct.step(noise_multiplier=sigma, sample_rate=q)
    assert ledger.epsilon(1e-5) == pytest.approx(direct.get_epsilon(delta=1e-5), rel=1e-9)
    orders = direct.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders) for _, s, q, n in schedule)
    assert ledger.epsilon(1e-5) == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0], rel=1e-9)
    assert 0 < ledger.epsilon(1e-5) < ledger.planned_epsilon(1.1, 8 / 240, 12, 1e-5)


def test_the_prv_ledger_matches_opacus(tmp_path: Path) -> None:
    ledger = FacilityLedger.load(tmp_path / "a.json", "prv")
    ledger.record(1, 1.0, 0.05, 20)
    direct = PRVAccountant()
    for _ in range(20):
        direct.step(noise_multiplier=1.0, sample_rate=0.05)
    assert FacilityLedger.load(tmp_path / "a.json", "prv").epsilon(1e-5) == pytest.approx(
        direct.get_epsilon(delta=1e-5), rel=1e-6
    )


def test_a_task_past_the_target_is_refused_before_training_and_records_nothing(tmp_path: Path) -> None:
    path = tmp_path / "accountant.json"
    ledger = FacilityLedger.load(path, "rdp")
    ledger.record(1, 1.0, 0.1, 50)
    spent = ledger.epsilon(1e-5)
    with pytest.raises(ExampleBudgetSpent, match=r"past example_privacy.target_epsilon"):
        ledger.check(1.0, 0.1, 50, 1e-5, target=spent * 1.01)
    assert json.loads(path.read_text())["rounds"] == [1]
    assert ledger.check(1.0, 0.1, 50, 1e-5, target=None) > spent


@pytest.mark.parametrize("text", ["{not json", '{"version": 1, "mechanism": "prv", "history": [], "rounds": []}'])
def test_an_unreadable_ledger_stops_the_job_instead_of_restarting_epsilon(tmp_path: Path, text: str) -> None:
    path = tmp_path / "accountant.json"
    path.write_text(text)
    with pytest.raises(ExampleBudgetSpent, match="cannot be read"):
        FacilityLedger.load(path, "rdp")


DP = ["example_privacy.noise_multiplier=1.0", "example_privacy.max_grad_norm=1.0", "model.compile=false",
      "facilities.1.launcher.nprocs=1"]  # fmt: skip


@pytest.mark.parametrize(("change", "key"), [
    ("data.packing=true", "data.packing"),
    ("model.peft=none", "model.peft"),
    ("model.compile=auto", "model.compile"),
    ("facilities.0.launcher.nprocs=2", "facilities.0.launcher"),
    ("algorithm.max_grad_norm=1.0", "algorithm.max_grad_norm"),
    ("algorithm.proximal_mu=0.01", "algorithm.proximal_mu"),
    ("example_privacy.noise_multiplier=0", "example_privacy.noise_multiplier"),
    ("example_privacy.accountant=gdp", "example_privacy.accountant"),
])  # fmt: skip
def test_what_example_privacy_cannot_protect_is_refused_at_its_key(change: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}\b"):
        load_experiment(QUICKSTART, [*DP, change])
    experiment = load_experiment(QUICKSTART, DP)
    assert all(experiment.recipe_for(f).example_privacy == experiment.example_privacy for f in experiment.facilities)


def test_the_servers_token_bound_admits_the_poisson_batches_of_an_honest_job() -> None:
    """A Poisson batch runs over its mean about half the time: the bound must not reject those updates."""
    experiment = load_experiment(QUICKSTART, DP)
    recipe = experiment.recipe_for(experiment.facilities[0])
    steps, mean_rows = 12, recipe.global_batch
    cap_rows = recipe.max_tokens(steps) // recipe.seq_len
    draws = torch.distributions.Binomial(steps * 400, torch.tensor(mean_rows / 400)).sample((20000,))
    assert (draws > steps * mean_rows).float().mean() > 0.3  # the plain bound would reject these
    assert int(draws.max()) <= cap_rows
    plain_experiment = load_experiment(QUICKSTART)
    plain = plain_experiment.recipe_for(plain_experiment.facilities[0])
    assert plain.max_tokens(steps) == steps * plain.global_batch * plain.seq_len
