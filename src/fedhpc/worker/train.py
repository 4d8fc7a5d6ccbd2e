"""The local training loop: a set number of optimizer steps, data-parallel over the job's ranks.

A set number, because the server weighs and schedules updates by their step count
(FedAvg's `steps` weighting, FedCompass's step assignment); `local_epochs` is turned
into a step count before training starts (`fedhpc.worker.train_recipe`).

One optimizer step sums `grad_accum_steps` micro-batches of `batch_size` rows on each
rank. Its loss is the mean over every loss-bearing token of all those micro-batches on
all ranks, not a mean of per-micro-batch or per-rank means: each micro-batch divides its
token sum by the step's token count on all ranks / world size (`num_items_in_batch`),
so the summed, rank-averaged gradient is that of one big batch. A job's update then does
not depend on how its batch is split over ranks and micro-batches (2 ranks × 2
micro-batches of 2 train as 1 rank with one batch of 8), and rows with more tokens are
not down-weighted. Rank 0 alone reports it. Under DDP the micro-batches before the last
skip the gradient all-reduce (`no_sync`); under FSDP every micro-batch reduce-scatters,
because skipping it would hold every layer's unsharded gradient until the last one, the
whole model's gradient on each rank, which is the memory FSDP exists to avoid.

After the last backward the whole gradient's L2 norm is taken (`clip_grad_norm_`: under
DDP the gradient is already averaged; under FSDP the shards are DTensors and torch
reduces their norms over the ranks) and, with `max_grad_norm`, the gradient is scaled
down to it. The pre-clip norm of each step is reported (`TrainResult.grad_norms`).

Each step's learning rate is the federation's curve at the step's position
(`fedhpc.lr_schedule`), set on the optimizer just before it steps, so a kept optimizer
(a persistent worker's) follows the curve too.

The model arrives either plain (wrapped here in DDP on more than one rank) or
already sharded by FSDP (`sharded`), which must not be wrapped again or moved.

FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks"): with
`settings.proximal_mu` μ > 0 the loss minimised is the task loss + μ/2·Σ‖w − w_global‖² over the
trainable tensors, w_global being their values when training starts (the applied global). The
term is added once per optimizer step, with the last micro-batch, so its gradient μ·(w − w_global)
counts once as it does for one big batch. The reported loss stays the task loss. With μ = 0
nothing is added, so training is exactly FedAvg's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from fedhpc.errors import ModelError
from fedhpc.exchange import TrainSettings
from fedhpc.lr_schedule import task_learning_rates
from fedhpc.worker.data import Batch
from fedhpc.worker.device import autocast, ddp_device_ids, fused_adamw
from fedhpc.worker.distributed import RankEnv, all_reduce_sum, summed_over_ranks
from fedhpc.worker.loss import CausalLMLoss


@dataclass(frozen=True)
class TrainResult:
    losses: list[float]  # token mean over all ranks and micro-batches, one per optimizer step
    grad_norms: list[float]  # the whole gradient's L2 norm before clipping, one per optimizer step
    lrs: list[float]  # the learning rate of each optimizer step
    tokens: int  # loss-bearing tokens, all ranks and micro-batches
    samples_seen: int  # examples, all ranks and micro-batches
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
    steps: int | None = None,
) -> TrainResult:
    """Train `model` in place for `steps` optimizer steps (`settings.local_steps` when None).

    `batches` yields micro-batches; `on_step(step, mean_loss)` runs after each step.
    `dtype` is the compute dtype: bfloat16 on an accelerator runs forward and backward
    under autocast (FSDP casts by its own policy instead); otherwise the parameters' dtype.
    `loss` is the module around `model` that computes the loss (`fedhpc.worker.loss`;
    built here when not given, and FSDP's root when `sharded`).

    AdamW covers the trainable parameters only and starts fresh each round unless
    `optimizer` (the one a persistent worker kept from its last task) is given:
    the moments are local and never travel. Fused AdamW where the device has it.
    """
    steps = settings.local_steps if steps is None else steps
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
        net = DistributedDataParallel(net, device_ids=ddp_device_ids(device))
    lrs = task_learning_rates(settings, steps)
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=lrs[0], weight_decay=settings.weight_decay, fused=fused_adamw(device))
    for group in optimizer.param_groups:  # a kept optimizer trains at this task's settings
        group["weight_decay"] = settings.weight_decay
    accumulate = settings.grad_accum_steps
    losses: list[float] = []
    norms: list[float] = []
    tokens = samples = 0
    # A step's loss and norm are read from the device only once the next step is queued behind
    # them, so the host never waits for the GPU to drain before it can launch more work.
    pending: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def report(step: int, summed: torch.Tensor, norm: torch.Tensor) -> None:
        losses.append(summed.item() / env.world_size)
        norms.append(norm.item())
        if on_step is not None:
            on_step(step, losses[-1])

    start = time.perf_counter()
    for step, lr in enumerate(lrs, start=1):
        micro = [next(batches) for _ in range(accumulate)]
        # The step's predicted tokens on all ranks / world size, kept on the device: one all-reduce
        # per step, and no host round trip before the forward.
        job_tokens = summed_over_ranks(
            torch.tensor(float(sum(batch.num_predicted_tokens for batch in micro)), device=device)
        )
        per_rank = job_tokens.clamp(min=1.0) / env.world_size
        step_loss = torch.zeros((), device=device)
        for index, batch in enumerate(micro):
            last = index == accumulate - 1
            with _gradient_sync(net, last):
                with contextlib.nullcontext() if sharded else autocast(device, dtype):  # FSDP casts by its policy
                    value = net(**batch.model_inputs(device), num_items_in_batch=per_rank)
                objective = value + mu / 2 * proximal_term(params, anchors) if mu > 0 and last else value
                objective.backward()
            step_loss += value.detach().float()
            tokens += batch.num_tokens
            samples += batch.num_examples
        norm = _whole_norm(params, settings.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if pending is not None:
            report(*pending)
        pending = (step, summed_over_ranks(step_loss), norm)
    if pending is not None:
        report(*pending)
    total_tokens, total_samples = all_reduce_sum([tokens, samples], device)
    seconds = time.perf_counter() - start
    return TrainResult(losses, norms, lrs, int(total_tokens), int(total_samples), seconds, optimizer)


def _gradient_sync(net: nn.Module, last: bool) -> AbstractContextManager[object]:
    """DDP's `no_sync` for every micro-batch but a step's last; nothing otherwise (see the module docstring)."""
    return net.no_sync() if isinstance(net, DistributedDataParallel) and not last else contextlib.nullcontext()


def _whole_norm(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The whole gradient's L2 norm (before clipping), clipping it to `max_norm` when given; on the device.

    Under FSDP the gradients are DTensor shards and torch's norm of them is a replicated
    DTensor holding the norm over all ranks' rows (a test pins it against one process).
    """
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor]) -> torch.Tensor:
    """Σ‖w − w_global‖² over the trainable tensors, in fp32.

    Under DDP its gradient μ·(w − w_global) joins the task gradient in the step's last
    backward pass, before the all-reduce; it is the same on every rank, so averaging keeps it
    whole. Under FSDP each rank adds its own rows' term straight to its gradient shard, after
    the reduce-scatter has averaged the task gradients, so it is whole there too.
    """
    return sum(((_local(p).float() - _local(a).float()) ** 2).sum() for p, a in zip(params, anchors, strict=True))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """An FSDP parameter's rows on this rank (differentiable); a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
