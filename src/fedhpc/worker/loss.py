"""The causal-LM loss without a full-vocabulary logits tensor.

transformers' causal LMs project every position to the vocabulary and upcast
the result to fp32 for the loss: for Llama-2-7B at sequence 512 x micro-batch 6
that is 6·512·32000 logits, 393 MB in fp32 plus a bf16 copy and the gradient of
each (four times that with Llama-3's 128k vocabulary). Yet in instruction
tuning the prompt positions carry no loss. `CausalLMLoss` instead runs the
decoder, keeps the hidden states of only the positions whose next token is
loss-bearing, and projects them a chunk at a time; each chunk is checkpointed,
so its logits are dropped after its loss and recomputed in the backward pass.
Peak memory for the loss is one chunk's logits, and the projection's compute
shrinks by the prompt's share of the tokens.

The value is the same sum the transformers loss takes (cross entropy of the
shifted labels, ignoring IGNORE_INDEX), divided by `num_items_in_batch`
(`fedhpc.worker.train` passes the job's tokens / world size); tests compare both.

It is an `nn.Module` wrapping the model, so DDP's and FSDP's forward hooks see
one forward that covers the decoder and the projection: FSDP shards it as the
root unit (the embedding, final norm and lm_head live there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from fedhpc.errors import ModelError
from fedhpc.worker.data import IGNORE_INDEX

CHUNK_TOKENS = 1024  # positions projected at once: 1024 x 32000 fp32 logits = 131 MB, x 128k = 524 MB


class CausalLMLoss(nn.Module):
    """`forward(input_ids, labels, ...)` → the token-summed loss / `num_items_in_batch`."""

    def __init__(self, model: nn.Module, chunk_tokens: int = CHUNK_TOKENS):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        causal_lm = causal_lm_of(model)
        if not hasattr(causal_lm, "model") or causal_lm.get_output_embeddings() is None:
            raise ModelError(f"{type(causal_lm).__name__} has no decoder and lm_head to compute a chunked loss with")

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        causal_lm = causal_lm_of(self.model)
        hidden = causal_lm.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        predicting = targets != IGNORE_INDEX
        picked, wanted = hidden[:, :-1][predicting], targets[predicting]
        head = causal_lm.get_output_embeddings()
        if wanted.numel() == 0:  # nothing to predict on this rank: a zero that still reaches every weight
            return _chunk_loss(head, hidden[:, :1].reshape(-1, hidden.shape[-1]), input_ids[:, :1].reshape(-1)) * 0
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, wanted.numel(), self.chunk_tokens):
            end = start + self.chunk_tokens
            total = total + checkpoint(_chunk_loss, head, picked[start:end], wanted[start:end], use_reentrant=False)
        divisor = num_items_in_batch if num_items_in_batch is not None else wanted.numel()
        return total / divisor


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside `model` (peft's wrapper removed; its LoRA layers stay in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model
