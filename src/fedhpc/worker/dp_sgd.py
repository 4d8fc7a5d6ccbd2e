"""Example-level DP inside a facility: DP-SGD over the LoRA adapters with Opacus (`example_privacy:`).

Each optimizer step (Abadi et al. 2016):
1. draws its batch by Poisson sampling: every example of the facility independently with
   probability q = batch_size × grad_accum_steps / examples (Opacus's `UniformWithReplacementSampler`),
   so the batch size varies from step to step and may be empty; the accountant's subsampling
   amplification assumes exactly this;
2. splits it into micro-batches of at most `batch_size` rows, each one forward and backward through
   Opacus's `GradSampleModule`, whose hooks on each LoRA `nn.Linear` give one gradient per example;
3. clips each example's whole gradient (all adapters together) to C = `max_grad_norm`, sums them over
   the micro-batches, adds N(0, σ²C²) once, divides by the expected batch size (`DPOptimizer`) and
   steps AdamW on that, at the step's scheduled learning rate.

An example's loss is the mean over its own loss-bearing tokens, so its gradient does not depend on which
other examples were sampled (the token-weighted loss of `fedhpc.worker.train` divides by the whole step's
token count, which would let one example rescale the others' gradients: no bounded sensitivity).

Noise and sampling draw from generators seeded from the operating system's entropy, never from the task's
seed: the server derives that seed (docs/contracts.md) and could otherwise regenerate the noise and
subtract it. They are torch's generators, not a cryptographically secure one (Opacus's `secure_mode` needs
torchcsprng), which docs/privacy.md states among the guarantee's limits.

The worker's other loop features do not apply here: FedProx's term, `max_grad_norm` of the whole batch
(per-example clipping replaces it), DDP/FSDP (one rank; `fedhpc.config.example_privacy` refuses more).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.checkpoint import checkpoint

from fedhpc.config.example_privacy import ExamplePrivacyConfig
from fedhpc.errors import ModelError
from fedhpc.exchange import TrainSettings, WorkerTask
from fedhpc.lr_schedule import task_learning_rates
from fedhpc.train_examples import Example
from fedhpc.worker.data import IGNORE_INDEX, Tokenized, collate, encode_example
from fedhpc.worker.device import autocast, length_multiple
from fedhpc.worker.dp_ledger import FacilityLedger
from fedhpc.worker.loaded import LoadedModel
from fedhpc.worker.loss import CHUNK_TOKENS, causal_lm_of
from fedhpc.worker.train import TrainResult

logger = logging.getLogger(__name__)


class PerExampleLoss(nn.Module):
    """`forward(input_ids, labels, attention_mask)` → each row's mean loss over its loss-bearing tokens, shape [rows].

    Like `fedhpc.worker.loss.CausalLMLoss`, only the positions whose next token carries a label are
    projected to the vocabulary, a checkpointed chunk at a time; the token losses are then summed per row.
    """

    def __init__(self, model: nn.Module, chunk_tokens: int = CHUNK_TOKENS):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        causal_lm = causal_lm_of(self.model)
        hidden = causal_lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        predicting = targets != IGNORE_INDEX
        rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[predicting]
        picked, wanted = hidden[:, :-1][predicting], targets[predicting]
        head = causal_lm.get_output_embeddings()
        pieces = [
            checkpoint(_token_losses, head, picked[start : start + self.chunk_tokens],
                       wanted[start : start + self.chunk_tokens], use_reentrant=False)
            for start in range(0, wanted.numel(), self.chunk_tokens)
        ]  # fmt: skip
        sums = hidden.new_zeros(targets.shape[0], dtype=torch.float32)
        if pieces:
            sums = sums.index_add(0, rows, torch.cat(pieces))
        return sums / predicting.sum(dim=1).clamp(min=1)


def _token_losses(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def sample_rate(settings: TrainSettings, examples: int) -> float:
    """q: the expected batch (batch_size × grad_accum_steps rows, one rank) over the facility's examples, at most 1."""
    return min(1.0, settings.batch_size * settings.grad_accum_steps / examples)


def entropy_generator(device: torch.device) -> torch.Generator:
    """A torch generator on `device` seeded from the OS's entropy (see the module docstring: never the task's seed)."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))


def train_dp_steps(
    model: nn.Module,
    examples: list[Tokenized | None],
    pad_id: int,
    settings: TrainSettings,
    privacy: ExamplePrivacyConfig,
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    *,
    on_step: Callable[[int, float | None], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    length_multiple: int = 1,
    max_length: int | None = None,
    sampling: torch.Generator | None = None,
    noise: torch.Generator | None = None,
) -> TrainResult:
    """Train `model` (LoRA) in place for `steps` DP-SGD steps over `examples` (None: one that did not tokenize).

    `sampling` and `noise` default to OS-entropy generators (`entropy_generator`); tests pass seeded ones.
    Returns the worker's `TrainResult`: `losses` hold each step's mean example loss only when
    `privacy.release_loss`; `grad_norms` the norm of each step's noised, averaged gradient (a function of
    what is released anyway). The optimizer returned is the plain AdamW (a persistent worker may keep it).
    """
    if not examples:
        raise ModelError("example_privacy needs at least one training example at the facility")
    model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the model has no trainable parameters; check model.peft and model.lora.target_modules")
    rate = sample_rate(settings, len(examples))
    expected = settings.batch_size * settings.grad_accum_steps
    lrs = task_learning_rates(settings, steps)
    base = optimizer or torch.optim.AdamW(params, lr=lrs[0], weight_decay=settings.weight_decay)
    for group in base.param_groups:
        group["weight_decay"] = settings.weight_decay
    net = GradSampleModule(PerExampleLoss(model), batch_first=True, loss_reduction="sum")
    dp = DPOptimizer(
        base, noise_multiplier=privacy.noise_multiplier, max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=expected, loss_reduction="mean", generator=noise or entropy_generator(device),
    )  # fmt: skip
    sampler = UniformWithReplacementSampler(
        num_samples=len(examples), sample_rate=rate, generator=sampling or entropy_generator(torch.device("cpu")),
        steps=steps,
    )  # fmt: skip
    losses: list[float] = []
    norms: list[float] = []
    tokens = samples = 0
    start = time.perf_counter()
    try:
        for step, (indices, lr) in enumerate(zip(sampler, lrs, strict=True), start=1):
            rows = [item for i in indices if (item := examples[i]) is not None]
            micro = [rows[i : i + settings.batch_size] for i in range(0, len(rows), settings.batch_size)]
            step_loss = 0.0
            for index, chunk in enumerate(micro):
                batch = collate([[row] for row in chunk], pad_id, packed=False, length_multiple=length_multiple,
                                max_length=max_length)
                with autocast(device, dtype):
                    per_example = net(**batch.model_inputs(device))
                with warnings.catch_warnings():  # Opacus's hooks on the first layer, whose input (token ids)
                    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                    per_example.sum().backward()  # has no gradient: expected, and said once per job otherwise
                step_loss += float(per_example.detach().sum())
                tokens += batch.num_tokens
                samples += batch.num_examples
                if index < len(micro) - 1:  # clip and accumulate; the noise and the step come with the last
                    dp.signal_skip_step(do_skip=True)
                    dp.step()
                    dp.zero_grad(set_to_none=True)
            if not micro:  # an empty Poisson batch: the step is noise alone, as the accountant assumes
                for p in params:
                    p.grad_sample = p.new_zeros((0, *p.shape))
            for group in dp.param_groups:
                group["lr"] = lr
            dp.step()
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
            dp.zero_grad(set_to_none=True)
            loss = step_loss / len(rows) if rows else math.nan
            if privacy.release_loss and rows:
                losses.append(loss)
            if on_step is not None:
                on_step(step, loss if privacy.release_loss and rows else None)
    finally:
        net.cleanup()  # the model leaves without Opacus's hooks and per-example attributes
    return TrainResult(losses, norms, lrs, tokens, samples, time.perf_counter() - start, base)


def train_private(
    task: WorkerTask,
    loaded: LoadedModel,
    examples: Sequence[Example],
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    progress: Callable[[int, float | None], None],
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[TrainResult, dict[str, float]]:
    """One task's DP-SGD, accounted in the facility's ledger; returns the result and the update's privacy metrics.

    The ledger refuses the task before any training when it would pass `target_epsilon`, and records
    its steps once they are trained, before the update is written (`fedhpc.worker.dp_ledger`).
    """
    assert task.example_privacy is not None and task.train is not None
    privacy, settings = task.example_privacy.settings, task.train
    ledger = FacilityLedger.load(task.example_privacy.accountant_file, privacy.accountant)
    rate = sample_rate(settings, len(examples))
    planned = ledger.check(privacy.noise_multiplier, rate, steps, privacy.delta, privacy.target_epsilon)
    logger.info("example-level DP: %d examples, sample rate %.4g, σ %g, C %g; facility ε %.3f → %.3f at δ %g",
                len(examples), rate, privacy.noise_multiplier, privacy.max_grad_norm, ledger.epsilon(privacy.delta),
                planned, privacy.delta)
    seq_len = task.data_config.seq_len
    tokenized = [encode_example(loaded.tokenizer, example, seq_len) for example in examples]
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else loaded.tokenizer.eos_token_id

    def on_step(step: int, loss: float | None) -> None:
        logger.info("step %d/%d%s", step, steps, "" if loss is None else f" loss {loss:.4f}")
        progress(step, loss)

    result = train_dp_steps(
        loaded.model, tokenized, pad_id, settings, privacy, device, dtype, steps, on_step=on_step,
        optimizer=optimizer, length_multiple=length_multiple(device), max_length=seq_len,
    )  # fmt: skip
    ledger.record(task.round, privacy.noise_multiplier, rate, steps)
    return result, {"example_epsilon": ledger.epsilon(privacy.delta)}
