"""Batched answer generation (greedy or beam search) from the base model plus a global's trainable tensors.

Prompts are encoded exactly as the worker encodes them for training (chat
template when the tokenizer has one), so evaluation sees the training format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedhpc.config import ModelConfig
from fedhpc.errors import ModelError
from fedhpc.exchange import ExchangeDir
from fedhpc.worker.data import encode_prompt
from fedhpc.worker.model import add_trainable, apply_global, build_base_model


def load_model(config: ModelConfig, global_dir: Path | None, device: torch.device) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The base model with adapters; with `global_dir`, the global's trainable tensors applied."""
    base = build_base_model(config)
    model = add_trainable(base.model, config)
    if global_dir is not None:
        global_ = ExchangeDir(global_dir)
        if global_.manifest.base_fingerprint != base.fingerprint:
            raise ModelError(
                f"{global_dir} was trained from base model {global_.manifest.base_fingerprint[:19]}…, "
                f"but model.source {config.source!r} loads {base.fingerprint[:19]}…"
            )
        apply_global(model, global_)
    if isinstance(model, PeftModel):
        # Folding the adapters into the base weights makes generation cost what the base model's does.
        model = model.merge_and_unload()
    return model.to(device).train(False), base.tokenizer  # inference mode: dropout off


@torch.inference_mode()
def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Completions in the order of `prompts`: greedy, or the best of a `num_beams`-wide beam search.

    Prompts are sorted by length before batching (left padding), which keeps
    padding, and so wasted compute, small; `on_batch(done, total)` reports progress.
    """
    encoded = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = encoded[index]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=num_beams,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, index in enumerate(chunk):
            answers[index] = tokenizer.decode(output[row, width:], skip_special_tokens=True)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    return answers
