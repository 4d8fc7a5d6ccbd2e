"""Bytes per GPU of a facility's training job, worked out before it is queued (`fedhpc validate`).

A job that runs out of GPU memory fails after its queue wait, so the plan is
arithmetic on the model's shape and the experiment file: no torch, no
transformers (the server never imports the worker). It is an estimate to
decide on sharding, offload and rank count, not a measurement.

Notation: N parameters in L decoder layers of P_layer each, P_outer = the
embeddings + final norm + lm_head (one matrix when tied), R ranks, s = seq_len,
b = micro-batch per rank, h = hidden, a = attention heads, V = vocab; p, c, g = bytes per value of
the stored weights (`model.dtype`), the forward/backward (`model.full.compute_dtype`
under FSDP, else p) and FSDP's gradient reduce-scatter. Per GPU (the job's ranks
as fedhpc.worker runs them: one rank is always a plain process):

Full fine-tuning (`model.peft: none`), AdamW:
  fsdp (FSDP2):  parameters  ⌈N·p/R⌉ (each rank's shard of the master weights)
                 working     c·(2·P_layer + P_outer) + g·max(P_layer, P_outer): the layer being
                             computed and the one prefetched, all-gathered in the compute dtype, the
                             root's embeddings and lm_head (not resharded after the forward), and the
                             unsharded gradients of one group on their way into the reduce-scatter
                 gradients   ⌈N·p/R⌉ (sharded, in the weights' dtype)
                 optimizer   2·⌈N·p/R⌉ (AdamW's two moments, in the weights' dtype)
                 cpu_offload moves parameters, gradients and optimizer state to host memory
                             (`host` = their sum per rank); working copies and activations stay
  ddp / single:  parameters  N·p; no working copy: the model computes in its stored dtype (c = p;
                 `compute_dtype` is FSDP's, and autocast runs only on weights already in
                 bfloat16); gradients N·p, plus N·p for DDP's reducer buckets
                 (`gradient_as_bucket_view=False`, torch's default; none on one rank);
                 optimizer 2·N·p. cpu_offload needs FSDP, so more than one rank; ignored here.
LoRA (`model.peft: lora`), replicated on every rank: parameters N·p (the frozen base) + 4·A for
  the adapters, A = Σ r·(in + out) over the targeted linear layers (peft keeps adapters in fp32);
  gradients 4·A (+4·A DDP buckets); optimizer 8·A.
FedProx (`algorithm.proximal_mu` > 0) adds an anchor copy of the trainable weights to parameters.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", arXiv:2205.05198, eq. 1): a layer keeps s·b·h·(34 + 5·a·s/h)
bytes in 16-bit. The 5·a·s/h term is the attention score matrix, which
`scaled_dot_product_attention` never materialises, so a layer is A_1 = 34·s·b·h·c/2.
The figure is GPT's; Llama's SwiGLU MLP (three matrices, I ≈ 8h/3) and absent
dropout land close to it, and for LoRA it is an upper bound (frozen linears do
not save their inputs).
  without checkpointing: L·A_1;  with it: s·b·h·c·L (each layer's input) + A_1 (one layer recomputed)
  plus the logits of one chunk of the loss, min(s·b, K)·V·(c + 4) with K = LOSS_CHUNK_TOKENS: the
  worker's loss (`fedhpc.worker.loss`) projects at most K positions to the vocabulary at once, in the
  compute dtype and then fp32 for the cross entropy, and recomputes them in the backward pass.

s, b and checkpointing are the facility's own (`facilities[i].train`, `Experiment.recipe_for`), so a
facility that trains shorter sequences or smaller micro-batches is planned as it will run; gradient
accumulation adds nothing beyond one micro-batch's activations (the gradients are summed in place).

Total = the sum of the terms, an upper bound of the peak (gradients fill as
activations are freed). It fits when total ≤ 0.9 · gpu_memory: the 10 % reserve
covers the CUDA context, NCCL buffers and allocator fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from fedhpc.config import Experiment, FacilityConfig
from fedhpc.config.compression import compressed_bytes
from fedhpc.config.model import NF4_BYTES_PER_PARAMETER
from fedhpc.errors import ModelError
from fedhpc.model_shape import ModelShape, model_shape, trainable_params

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ACTIVATION_FACTOR = 34  # Korthikanti et al. 2022: bytes per token per hidden unit of one layer, in 16-bit
RESERVE = 0.10  # of gpu_memory, kept for the CUDA context, NCCL buffers and fragmentation
ADAPTER_BYTES = 4  # peft keeps LoRA weights in float32 even on a bfloat16 base (autocast_adapter_dtype)
MAX_RANKS = 4096  # the most ranks the "needs at least N ranks" advice looks at
LOSS_CHUNK_TOKENS = 1024  # as fedhpc.worker.loss.CHUNK_TOKENS (a test keeps them equal; the server never imports it)
Sharding = Literal["fsdp", "ddp", "single"]


@dataclass(frozen=True)
class PlanInputs:
    """Everything `plan_memory` depends on; kept on the plan so advice can vary one input."""

    shape: ModelShape
    ranks: int
    sharding: Sharding
    param_dtype: str
    compute_dtype: str
    reduce_dtype: str
    peft: str
    lora_r: int
    lora_targets: tuple[str, ...]
    seq_len: int
    micro_batch: int
    activation_checkpointing: bool
    cpu_offload: bool
    gpu_memory: int | None
    proximal: bool
    quantized: bool = False  # model.quantize nf4: the decoder layers' linear weights held in 4 bits


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU (and per rank on the host) of one facility's job; the formulas are the module's."""

    inputs: PlanInputs
    trainable: int
    params: int
    working: int
    grads: int
    optimizer: int
    activations: int
    host: int
    offloaded: bool  # cpu_offload in effect (requested and under FSDP)

    @property
    def total(self) -> int:
        return self.params + self.working + self.grads + self.optimizer + self.activations

    @property
    def usable(self) -> int | None:
        memory = self.inputs.gpu_memory
        return None if memory is None else int(memory * (1 - RESERVE))

    @property
    def fits(self) -> bool | None:
        """None when the GPU's memory is not known."""
        return None if self.usable is None else self.total <= self.usable


def resolve_sharding(sharding: str, ranks: int) -> Sharding:
    """One rank is a plain process whatever the setting (the worker neither shards nor wraps it); else ddp or FSDP."""
    return "single" if ranks == 1 else "ddp" if sharding == "ddp" else "fsdp"


def plan_memory(
    shape: ModelShape, *, ranks: int, sharding: str, param_dtype: str, compute_dtype: str,
    reduce_dtype: str = "float32", peft: str = "none", lora_r: int = 8,
    lora_targets: list[str] | tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    seq_len: int, micro_batch: int, activation_checkpointing: bool, cpu_offload: bool = False,
    gpu_memory: int | None = None, proximal: bool = False, quantized: bool = False,
) -> MemoryPlan:  # fmt: skip
    """The plan of one job; `sharding` is auto, fsdp or ddp (LoRA ignores it and replicates)."""
    layout = resolve_sharding(sharding, ranks) if peft == "none" else ("single" if ranks == 1 else "ddp")
    return _plan(PlanInputs(
        shape, ranks, layout, param_dtype, compute_dtype, reduce_dtype, peft, lora_r, tuple(lora_targets),
        seq_len, micro_batch, activation_checkpointing, cpu_offload, gpu_memory, proximal, quantized,
    ))  # fmt: skip


def _plan(i: PlanInputs) -> MemoryPlan:
    shape, ranks = i.shape, i.ranks
    p, g = DTYPE_BYTES[i.param_dtype], DTYPE_BYTES[i.reduce_dtype]
    c = DTYPE_BYTES[i.compute_dtype] if i.sharding == "fsdp" and i.peft == "none" else p
    trainable = trainable_params(shape, i.peft, i.lora_r, i.lora_targets)
    buckets = 1 if i.sharding == "ddp" else 0
    if i.peft != "none":
        params = _frozen_base_bytes(shape, p, i.quantized) + trainable * ADAPTER_BYTES * (2 if i.proximal else 1)
        working, grads, optimizer = 0, trainable * ADAPTER_BYTES * (1 + buckets), 2 * trainable * ADAPTER_BYTES
    elif i.sharding == "fsdp":
        shard = -(-shape.num_params * p // ranks)
        params, grads, optimizer = shard * (2 if i.proximal else 1), shard, 2 * shard
        working = c * (2 * shape.layer_params + shape.outer_params) + g * max(shape.layer_params, shape.outer_params)
    else:
        whole = shape.num_params * p
        params, grads, optimizer = whole * (2 if i.proximal else 1), whole * (1 + buckets), 2 * whole
        working = 0
    offloaded = i.cpu_offload and i.peft == "none" and i.sharding == "fsdp"
    host = params + grads + optimizer if offloaded else 0
    if offloaded:
        params = grads = optimizer = 0
    return MemoryPlan(i, trainable, params, working, grads, optimizer, _activations(i, c), host, offloaded)


def _frozen_base_bytes(shape: ModelShape, p: int, quantized: bool) -> int:
    """The frozen base under LoRA: `p` bytes a weight, or nf4 for the decoder layers' linears (embeddings,
    norms and lm_head stay at the model's dtype, as `fedhpc.worker.model` loads them)."""
    if not quantized:
        return shape.num_params * p
    linears = shape.layers * sum(n_in * n_out for n_in, n_out in shape.linears().values())
    return math.ceil(linears * NF4_BYTES_PER_PARAMETER) + (shape.num_params - linears) * p


def _activations(i: PlanInputs, c: int) -> int:
    s, b, h, layers, vocab = i.seq_len, i.micro_batch, i.shape.hidden, i.shape.layers, i.shape.vocab
    one_layer = ACTIVATION_FACTOR * s * b * h * c // 2
    kept = s * b * h * c * layers + one_layer if i.activation_checkpointing else layers * one_layer
    return kept + min(s * b, LOSS_CHUNK_TOKENS) * vocab * (c + 4)


def remedies(plan: MemoryPlan) -> list[str]:
    """Single changes that would make a plan fit that does not, cheapest first."""
    i = plan.inputs
    if plan.fits is not False:
        return []
    tries: list[tuple[str, PlanInputs]] = []
    least = None
    if i.peft == "none":
        sharded = replace(i, sharding="fsdp")
        if i.sharding == "ddp":
            tries.append(("model.full.sharding: fsdp", sharded))
        if not i.activation_checkpointing:
            tries.append(("train.activation_checkpointing: true", replace(i, activation_checkpointing=True)))
        if not i.cpu_offload and i.ranks > 1:
            also = " with sharding fsdp" if i.sharding != "fsdp" else ""
            tries.append((f"model.full.cpu_offload: true{also}", replace(sharded, cpu_offload=True)))
        more = range(i.ranks + 1, MAX_RANKS + 1) if i.ranks == 1 or not _plan(sharded).fits else range(0)
        least = next((r for r in more if _plan(replace(sharded, ranks=r)).fits), None)
    elif i.param_dtype == "float32":
        tries.append(("model.dtype: bfloat16", replace(i, param_dtype="bfloat16", compute_dtype="bfloat16")))
    found = [label for label, changed in tries if _plan(changed).fits]
    if least is not None:
        found.append(f"at least {least} ranks" + (" under fsdp" if i.sharding != "fsdp" else ""))
    smaller = [b for b in range(1, i.micro_batch) if _plan(replace(i, micro_batch=b)).fits]
    if smaller:  # the same sequences per step with more accumulation
        found.append(f"train.batch_size: {smaller[-1]} (raise train.grad_accum_steps to keep the global batch)")
    return found or ["a GPU with more memory"]


def facility_plan(
    exp: Experiment, facility: FacilityConfig, shape: ModelShape, *, gpus: int | None = None,
    gpu_memory: int | None = None,
) -> MemoryPlan:  # fmt: skip
    """The plan of `facility`'s jobs, as its recipe trains; `gpus` and `gpu_memory` are what-ifs overriding the file."""
    recipe = exp.recipe_for(facility)
    model, full, job = recipe.model, recipe.model.full, facility.launcher.resources()
    on_cpu = job.device == "cpu"
    compute = full.compute_dtype if full.compute_dtype != "auto" else "float32" if on_cpu else "bfloat16"
    lora = model.peft != "none"
    return plan_memory(
        shape, ranks=gpus or job.ranks, sharding=full.sharding, param_dtype=model.dtype,
        compute_dtype=model.dtype if lora else compute, reduce_dtype=full.reduce_dtype, peft=model.peft,
        lora_r=model.lora.r, lora_targets=model.lora.target_modules, seq_len=recipe.seq_len,
        micro_batch=recipe.batch_size, activation_checkpointing=full.activation_checkpointing and not lora,
        cpu_offload=full.cpu_offload, gpu_memory=gpu_memory or facility.gpu_memory,
        proximal=exp.algorithm.proximal_mu > 0, quantized=lora and model.quantize != "none",
    )  # fmt: skip


def format_bytes(n: float) -> str:
    """Binary units, three significant digits: 3.14 GiB, 15.2 GiB, 461 MiB, 40 GiB."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if n >= 100 or unit == "B" else f"{n:.3g} {unit}"


def format_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def describe_plan(plan: MemoryPlan) -> list[str]:
    """The per-GPU table `fedhpc validate` prints under a facility's layout line."""
    i = plan.inputs
    full = i.peft == "none"
    held = (f"{i.param_dtype} shard 1/{i.ranks}" if i.sharding == "fsdp" else f"{i.param_dtype}, whole") if full \
        else "float32 adapters"
    host = "on the host (cpu_offload): " if plan.offloaded else ""
    rows = [("parameters", plan.params, host + (held if full else f"frozen {i.param_dtype} base + {held}")
             + (", + FedProx anchor" if i.proximal else ""))]
    if plan.working:
        rows.append(("working", plan.working, f"transient {i.compute_dtype} copies: gathered layers and lm_head, "
                     "gradients on their way to the reduce-scatter"))
    rows += [
        ("gradients", plan.grads, host + held + (", + DDP's reducer buckets" if i.sharding == "ddp" else "")),
        ("optimizer", plan.optimizer, f"{host}AdamW's 2 moments, {held}"),
        ("activations", plan.activations, f"seq {i.seq_len} x micro-batch {i.micro_batch}, "
         + ("each layer recomputed in the backward" if i.activation_checkpointing else "no recomputation")),
    ]
    if plan.fits is None:
        verdict = "set the facility's gpu_memory (or --gpu-memory) to check that it fits"
    elif plan.fits:
        verdict = f"fits in {format_bytes(i.gpu_memory)} ({format_bytes(plan.usable)} usable after a 10% reserve)"
    else:
        verdict = (f"does not fit in {format_bytes(i.gpu_memory)} ({format_bytes(plan.usable)} usable): try "
                   + " / ".join(remedies(plan)))
    rows.append(("total", plan.total, verdict))
    lines = [f"{name:<12}{format_bytes(size):>10}  {what}" for name, size, what in rows]
    if plan.offloaded:
        lines.append(f"{'host':<12}{format_bytes(plan.host):>10}  per rank: its shard of weights, gradients, moments")
    elif i.cpu_offload and full:
        lines.append("cpu_offload needs FSDP (sharding fsdp or auto, on more than one rank); ignored here")
    return lines


def describe_layout(plan: MemoryPlan) -> str:
    """How the weights sit on a job's ranks, in one phrase."""
    i = plan.inputs
    if i.peft != "none":
        return f"LoRA r={i.lora_r}: the frozen base on every rank, {format_count(plan.trainable)} adapter parameters"
    if i.sharding == "fsdp":
        return f"fsdp: each rank holds 1/{i.ranks} of the weights, gradients and optimizer state"
    return "ddp: a whole copy per rank" if i.sharding == "ddp" else "one process: the whole model, unsharded"


def describe_memory(
    exp: Experiment, what_if: ModelShape | None = None, *, gpus: int | None = None, gpu_memory: int | None = None
) -> list[str]:
    """`fedhpc validate`'s memory section: the model, then each facility's ranks and table.

    Advice only: a plan that does not fit, or a model whose shape is unknown
    offline, is a line of text, never an error.
    """
    try:
        shape = what_if or model_shape(exp.model)
    except ModelError as e:
        return [f"memory plan: {e}"]
    except OSError as e:  # a model path this machine cannot look up (a name too long here)
        return [f"memory plan: cannot read model {exp.model.source[:200]}: {e.strerror}"]
    if shape is None:
        return [f"memory plan: the shape of model {exp.model.source} is not known offline (a hub id, or a GGUF "
                "not converted yet); give its size, e.g. --params 7e9"]
    plans = [(f, facility_plan(exp, f, shape, gpus=gpus, gpu_memory=gpu_memory)) for f in exp.facilities]
    trainable, dtype = plans[0][1].trainable, exp.exchange.update_dtype
    lines = [
        f"memory plan: {shape.name}{' (--params)' if what_if else ''}, {format_count(shape.num_params)} parameters "
        f"({shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}); "
        f"{'full fine-tuning' if exp.model.peft == 'none' else 'LoRA'}, {format_count(trainable)} trainable: "
        f"an update is {format_bytes(trainable * DTYPE_BYTES[dtype])} in {dtype}"
        + (f", about {format_bytes(compressed_bytes(trainable, codec))} compressed by {codec.codec}"
           if (codec := exp.exchange.compression).enabled else "")
    ]
    for facility, plan in plans:
        job = facility.launcher.resources()
        layout = f"{job.nodes} node{'s' * (job.nodes > 1)} x {job.ranks_per_node}"
        ranks = plan.inputs.ranks
        where = f"--gpus; the launcher starts {job.ranks}: {layout}" if gpus else layout
        if job.device == "cpu":
            where += "; device cpu: bytes per process"
        lines.append(f"  facility {facility.name}: {ranks} rank{'s' * (ranks > 1)} ({where}), {describe_layout(plan)}")
        lines += [f"    {line}" for line in describe_plan(plan)]
    return lines
