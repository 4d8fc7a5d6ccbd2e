"""The chunked causal-LM loss equals transformers' loss, value and gradients, without its full logits."""

from __future__ import annotations

import pytest
import torch

from fedhpc.config import ModelConfig, TinyLlamaConfig
from fedhpc.worker.data import IGNORE_INDEX, Example, batches
from fedhpc.config import DataConfig
from fedhpc.worker.loss import CausalLMLoss
from fedhpc.worker.model import add_trainable, build_base_model

EXAMPLES = [
    Example(prompt=f"Formula of molecule {i}? " * (1 + i % 3), completion=f"C{i}H{2 * i + 2}O") for i in range(6)
]


def model_and_batch(peft: str, packing: bool):
    config = ModelConfig(peft=peft, tiny=TinyLlamaConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2))
    base = build_base_model(config)
    model = add_trainable(base.model, config)
    batch = next(batches(EXAMPLES, base.tokenizer, DataConfig(seq_len=128, packing=packing), batch_size=3))
    return model, batch


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("peft", ["lora", "none"])
@pytest.mark.parametrize("packing", [False, True])
def test_chunked_loss_matches_the_transformers_loss_and_its_gradients(peft: str, packing: bool) -> None:
    model, batch = model_and_batch(peft, packing)
    inputs = batch.model_inputs(torch.device("cpu"))
    items = torch.tensor(37.0)  # as train.py passes: the job's tokens / world size

    reference = model(**inputs, use_cache=False, num_items_in_batch=items).loss
    reference.backward()
    expected = gradients(model)

    chunked = CausalLMLoss(model, chunk_tokens=7)(**inputs, num_items_in_batch=items)  # several chunks
    chunked.backward()
    actual = gradients(model)

    torch.testing.assert_close(chunked, reference, rtol=1e-6, atol=1e-6)
    assert actual.keys() == expected.keys() and expected
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_without_num_items_it_is_the_mean_over_predicted_tokens() -> None:
    model, batch = model_and_batch("lora", packing=False)
    inputs = batch.model_inputs(torch.device("cpu"))
    expected = model(**inputs, use_cache=False).loss
    torch.testing.assert_close(CausalLMLoss(model)(**inputs), expected, rtol=1e-6, atol=1e-6)


def test_a_batch_with_nothing_to_predict_gives_zero_and_a_gradient_for_every_weight() -> None:
    model, batch = model_and_batch("none", packing=False)
    inputs = batch.model_inputs(torch.device("cpu"))
    inputs["labels"] = torch.full_like(inputs["labels"], IGNORE_INDEX)
    loss = CausalLMLoss(model)(**inputs, num_items_in_batch=1.0)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None for p in model.parameters()), "DDP would wait for the missing gradients"
