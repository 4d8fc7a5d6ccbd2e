"""Training throughput on one GPU: tokens/s, MFU and peak memory of a plain transformers + peft loop.

    .venv/bin/python bench/gpu_throughput.py [--cases lora-7b lora-7b-ckpt full-1b] [--steps 20]
        [--peak-flops 989e12] [--loop plain|fedhpc]
    .venv/bin/python bench/gpu_throughput.py --tiny        # CPU smoke check: a tiny Llama, a few steps

The reference a facility's worker is measured against (issue 8). Models are
Llama-shaped, randomly initialised from a `LlamaConfig` (nothing downloaded):

    lora-7b        Llama-2-7B shape, LoRA r=16 (alpha 32) on q,k,v,o_proj, base weights bf16
    lora-7b-ckpt   the same with activation checkpointing
    full-1b        Llama-3.2-1B shape (1.24B), every weight trained: fp32 master weights, AdamW
    full-1b-ckpt   the same with activation checkpointing

Every case: sequence length 512, micro-batch 6, bf16 autocast, random tokens as
their own labels, AdamW, --warmup steps untimed, then --steps timed steps. MFU
is 6·N·tokens/s / --peak-flops with N every parameter of the model, frozen or
not (default peak: 989e12, H100 SXM dense bf16; an H200's is the same). 6·N is
the usual convention; a LoRA step does no weight-gradient matmuls for frozen
weights (about 4·N) and checkpointing recomputes the forward (about +2·N), so
the FLOPs actually executed differ: the figure compares runs, it is not a
hardware efficiency.

`--loop` picks the training loop: `plain` (transformers + peft as a user would
write it) or `fedhpc` (the worker's `train_local_steps`: chunked loss, fused
AdamW); both see the same model, batches and settings, so their ratio is the
worker's gain. `--tiny` swaps every case's model for
a 2-layer Llama, sequence 64, micro-batch 2, and runs on the CPU unless CUDA is
there: it checks the script, not a throughput. Prints one JSON line:

    {"bench": "gpu_throughput", "loop": ..., "device": ..., "cases": {"lora-7b": {"tokens_per_s", "mfu",
     "step_s", "peak_memory_gb", "params", "trainable_params", "loss_first", "loss_last"}, ...}}

A case that runs out of memory is reported as {"error": "out of memory"} and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

log = logging.getLogger("bench.gpu_throughput")

# Llama shapes: hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings
SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False),
}  # fmt: skip
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class Case:
    shape: str
    lora: bool
    checkpointing: bool


CASES: dict[str, Case] = {
    "lora-7b": Case("llama2-7b", lora=True, checkpointing=False),
    "lora-7b-ckpt": Case("llama2-7b", lora=True, checkpointing=True),
    "full-1b": Case("llama3.2-1b", lora=False, checkpointing=False),
    "full-1b-ckpt": Case("llama3.2-1b", lora=False, checkpointing=True),
}


@dataclass(frozen=True)
class Settings:
    device: torch.device
    seq_len: int
    micro_batch: int
    steps: int
    warmup: int
    lora_r: int
    peak_flops: float
    tiny: bool


def build_model(case: Case, settings: Settings) -> torch.nn.Module:
    """Random init straight on the device: LoRA's frozen base in bf16, full fine-tuning's master weights in fp32."""
    shape = SHAPES["tiny" if settings.tiny else case.shape]
    config = LlamaConfig(**shape, max_position_embeddings=max(settings.seq_len, 2048))
    dtype = torch.bfloat16 if case.lora else torch.float32
    torch.manual_seed(0)
    with torch.device(settings.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    if case.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if case.lora:  # peft keeps the adapters in fp32 (autocast_adapter_dtype), the base frozen
        lora = LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, target_modules=LORA_TARGETS,
                          lora_dropout=0.0, task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(model, lora)
    return model.train()


def batches(settings: Settings, vocab_size: int) -> Callable[[], torch.Tensor]:
    """Random token ids, seeded; the same tensor shape every step, like packed training data."""
    generator = torch.Generator(device=settings.device).manual_seed(1)

    def next_batch() -> torch.Tensor:
        return torch.randint(0, vocab_size, (settings.micro_batch, settings.seq_len), device=settings.device,
                             generator=generator)  # fmt: skip

    return next_batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=tokens.device.type, dtype=torch.bfloat16):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def peak_memory_gb(device: torch.device) -> float:
    """GPU: the allocator's peak since the case began; CPU: the process's peak RSS (all cases so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_plain(case: Case, settings: Settings) -> dict[str, Any]:
    """transformers + peft, one process, no framework: the loop the worker should come close to."""
    if settings.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings.device)
    model = build_model(case, settings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=settings.device.type == "cuda")
    next_batch = batches(settings, model.config.vocab_size)
    losses = [train_step(model, optimizer, next_batch()) for _ in range(settings.warmup)]
    synchronize(settings.device)
    start = time.perf_counter()
    losses += [train_step(model, optimizer, next_batch()) for _ in range(settings.steps)]
    synchronize(settings.device)
    result = summarise(model, settings, time.perf_counter() - start, [float(loss) for loss in losses])
    del model, optimizer, trainable
    release(settings.device)
    return result


def run_fedhpc(case: Case, settings: Settings) -> dict[str, Any]:
    """fedhpc's worker loop (`fedhpc.worker.train.train_local_steps`) on the same model and batches.

    What the worker adds over the plain loop: the chunked loss (`fedhpc.worker.loss`,
    no full-vocabulary fp32 logits), the token-mean loss across ranks, fused AdamW
    on GPUs, and a per-step loss read for the progress file.
    """
    from fedhpc.exchange import TrainSettings
    from fedhpc.worker.data import Batch
    from fedhpc.worker.distributed import RankEnv
    from fedhpc.worker.train import train_local_steps

    if settings.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings.device)
    model = build_model(case, settings)
    next_batch = batches(settings, model.config.vocab_size)

    def worker_batches() -> Any:
        while True:
            tokens = next_batch()
            yield Batch(tokens, tokens, attention_mask=None, position_ids=None, num_examples=settings.micro_batch)

    stream = worker_batches()
    dtype = torch.bfloat16 if case.lora else torch.float32
    warmup = train_local_steps(model, stream, TrainSettings(local_steps=settings.warmup, lr=1e-4,
                                                             batch_size=settings.micro_batch), settings.device,
                               RankEnv(), dtype)  # fmt: skip
    synchronize(settings.device)
    timed = train_local_steps(model, stream, TrainSettings(local_steps=settings.steps, lr=1e-4,
                                                            batch_size=settings.micro_batch), settings.device,
                              RankEnv(), dtype, optimizer=warmup.optimizer)  # fmt: skip
    synchronize(settings.device)
    result = summarise(model, settings, timed.seconds, warmup.losses + timed.losses)
    del model, warmup, timed
    release(settings.device)
    return result


def summarise(model: torch.nn.Module, settings: Settings, seconds: float, losses: list[float]) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    tokens_per_s = settings.steps * settings.micro_batch * settings.seq_len / seconds
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": float(f"{6 * params * tokens_per_s / settings.peak_flops:.3g}"),
        "step_s": round(seconds / settings.steps, 4),
        "peak_memory_gb": round(peak_memory_gb(settings.device), 2),
        "params": params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }


# The training loops a case can be measured with, on the same model, batches and settings.
LOOPS: dict[str, Callable[[Case, Settings], dict[str, Any]]] = {"plain": run_plain, "fedhpc": run_fedhpc}


def release(device: torch.device) -> None:
    """Free what a case held, so the next case's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(name: str, loop: str, settings: Settings) -> dict[str, Any]:
    log.info("%s (%s loop) ...", name, loop)
    try:
        result = LOOPS[loop](CASES[name], settings)
    except torch.cuda.OutOfMemoryError:
        release(settings.device)
        return {"error": "out of memory"}
    log.info("%s: %s", name, result)
    return result


def settings_from(args: argparse.Namespace) -> Settings:
    """--tiny shrinks everything to a smoke check; otherwise the issue's sizes on CUDA (refused without it)."""
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        sys.exit("error: no CUDA device; this benchmark is for a GPU machine (use --tiny for a CPU smoke check)")
    return Settings(
        device=torch.device("cuda" if cuda else "cpu"),
        seq_len=64 if args.tiny else args.seq_len,
        micro_batch=2 if args.tiny else args.micro_batch,
        steps=args.steps if args.steps is not None else (3 if args.tiny else 20),
        warmup=1 if args.tiny else args.warmup,
        lora_r=args.lora_r,
        peak_flops=args.peak_flops,
        tiny=args.tiny,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=["lora-7b", "lora-7b-ckpt", "full-1b"])
    parser.add_argument("--loop", choices=list(LOOPS), default="plain", help="the training loop measured")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 3 with --tiny)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (1 with --tiny)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=6)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--peak-flops", type=float, default=989e12, help="the device's peak bf16 FLOP/s (dense)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps: a smoke check, CPU is fine")
    args = parser.parse_args()
    settings = settings_from(args)
    device_name = torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else "cpu"
    cases = {name: measure(name, args.loop, settings) for name in args.cases}
    print(json.dumps({
        "bench": "gpu_throughput", "loop": args.loop, "device": device_name, "tiny": args.tiny,
        "torch": torch.__version__, "seq_len": settings.seq_len, "micro_batch": settings.micro_batch,
        "steps": settings.steps, "peak_flops": settings.peak_flops, "cases": cases,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
