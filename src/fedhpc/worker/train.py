"""The local training loop: exactly `local_steps` optimizer steps, data-parallel over the job's ranks.

Exactly, because the server weighs and schedules updates by their step count
(FedAvg's `steps` weighting, FedCompass's step assignment); an epoch-based
loop would make that depend on dataset size.

The loss is the mean over every loss-bearing token of the step on all ranks,
not the mean of per-rank means: each rank divides its token sum by the job's
token count / world size (`num_items_in_batch`), so the averaged gradient is
that of one big batch. A job's update then does not depend on how its batch is
split over ranks (2 ranks of 4 examples train as 1 rank of 8), and ranks with
more tokens are not down-weighted. Rank 0 alone reports it.

The model arrives either plain (wrapped here in DDP on more than one rank) or
already sharded by FSDP (`sharded`), which must not be wrapped again or moved.

FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks"): with
`settings.proximal_mu` μ > 0 the loss minimised is the task loss + μ/2·Σ‖w − w_global‖² over the
trainable tensors, w_global being their values when training starts (the applied global). The
reported loss stays the task loss. With μ = 0 nothing is added, so training is exactly FedAvg's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from fedhpc.errors import ModelError
from fedhpc.exchange import TrainSettings
from fedhpc.worker.data import Batch
from fedhpc.worker.distributed import RankEnv, all_reduce_sum, summed_over_ranks
from fedhpc.worker.loss import CausalLMLoss


@dataclass(frozen=True)
class TrainResult:
    losses: list[float]  # token mean over all ranks, one per optimizer step
    tokens: int  # loss-bearing tokens, all ranks
    samples_seen: int  # examples, all ranks
    seconds: float
    optimizer: torch.optim.Optimizer  # for a persistent worker that keeps its moments (model.keep_optimizer_state)


def train_local_steps(
    model: nn.Module,
    batches: Iterator[Batch],
    settings: TrainSettings,
    device: torch.device,
    env: RankEnv,
    dtype: torch.dtype,
    on_step: Callable[[int, float], None] | None = None,
    loss: CausalLMLoss | None = None,
    sharded: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainResult:
    """Train `model` in place; `on_step(step, mean_loss)` runs after each step.

    `dtype` is the compute dtype: bfloat16 on a GPU runs forward and backward under
    autocast (FSDP casts by its own policy instead); otherwise the parameters' dtype.
    `loss` is the module around `model` that computes the loss (`fedhpc.worker.loss`;
    built here when not given, and FSDP's root when `sharded`).

    AdamW covers the trainable parameters only and starts fresh each round unless
    `optimizer` (the one a persistent worker kept from its last task) is given:
    the moments are local and never travel. Fused AdamW on GPUs.
    """
    mu = settings.proximal_mu
    if not sharded:
        model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the model has no trainable parameters; check model.peft and model.lora.target_modules")
    anchors = [p.detach().clone() for p in params] if mu > 0 else []  # w_global, for FedProx
    net: nn.Module = loss if loss is not None else CausalLMLoss(model)
    if env.distributed and not sharded:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if optimizer is None:
        optimizer = torch.optim.AdamW(
            params, lr=settings.lr, weight_decay=settings.weight_decay, fused=device.type == "cuda" or None
        )
    for group in optimizer.param_groups:  # a kept optimizer trains at this task's settings
        group.update(lr=settings.lr, weight_decay=settings.weight_decay)
    use_autocast = device.type == "cuda" and dtype == torch.bfloat16 and not sharded  # FSDP casts by its policy
    losses: list[float] = []
    tokens = samples = 0
    # A step's loss is read from the device only once the next step is queued behind it, so the
    # host never waits for the GPU to drain before it can launch more work (one step of lag).
    pending: tuple[int, torch.Tensor] | None = None

    def report(step: int, summed: torch.Tensor) -> None:
        losses.append(summed.item() / env.world_size)
        if on_step is not None:
            on_step(step, losses[-1])

    start = time.perf_counter()
    for step in range(1, settings.local_steps + 1):
        batch = next(batches)
        # The job's predicted tokens / world size, kept on the device: no host round trip before the forward.
        job_tokens = summed_over_ranks(torch.tensor(float(batch.num_predicted_tokens), device=device))
        per_rank = job_tokens.clamp(min=1.0) / env.world_size
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
        with autocast:
            value = net(**batch.model_inputs(device), num_items_in_batch=per_rank)
        objective = value + mu / 2 * proximal_term(params, anchors) if mu > 0 else value
        objective.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if pending is not None:
            report(*pending)
        pending = (step, summed_over_ranks(value.detach().float().clone()))
        tokens += batch.num_tokens
        samples += batch.num_examples
    if pending is not None:
        report(*pending)
    total_tokens, total_samples = all_reduce_sum([tokens, samples], device)
    return TrainResult(losses, int(total_tokens), int(total_samples), time.perf_counter() - start, optimizer)


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor]) -> torch.Tensor:
    """Σ‖w − w_global‖² over the trainable tensors, in fp32.

    Under DDP its gradient μ·(w − w_global) joins the task gradient in the same backward pass,
    before the all-reduce; it is the same on every rank, so averaging keeps it whole. Under
    FSDP each rank adds its own rows' term straight to its gradient shard, after the
    reduce-scatter has averaged the task gradients, so it is whole there too.
    """
    return sum(((_local(p).float() - _local(a).float()) ** 2).sum() for p, a in zip(params, anchors, strict=True))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """An FSDP parameter's rows on this rank (differentiable); a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
