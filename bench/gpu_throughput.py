"""Training throughput on one GPU: fedhpc's worker loop against a plain transformers + peft loop.

    .venv/bin/python bench/gpu_throughput.py --loop plain|fedhpc|fedhpc-eager
        [--cases lora-7b lora-7b-ckpt lora-7b-var full-1b full-1b-ckpt] [--steps 20] [--profile]
    .venv/bin/python bench/gpu_throughput.py --tiny --loop fedhpc     # CPU smoke check: a tiny Llama

The reference a facility's worker is measured against (issue 8). Models are
Llama-shaped, randomly initialised from a `LlamaConfig` (nothing downloaded):

    lora-7b        Llama-2-7B shape, LoRA r=16 (alpha 32) on q,k,v,o_proj, base weights bf16
    lora-7b-ckpt   the same with activation checkpointing
    lora-7b-var    lora-7b on instruction-like examples of varying length (below)
    full-1b        Llama-3.2-1B shape (1.24B), every weight trained: fp32 master weights, AdamW
    full-1b-ckpt   the same with activation checkpointing

Every case: sequence length 512, micro-batch 6, bf16 autocast, AdamW (fused on
GPUs), --warmup untimed steps (they include any compilation, reported as
`warmup_s`), then --steps timed steps. The fixed cases train on full rows of
random tokens that are their own labels. `lora-7b-var` draws example lengths
from a log-normal (median 160 tokens, σ 0.6, 16 to 512), the first 60% of each
a prompt without loss: the plain loop pads each micro-batch of 6 examples to
its longest (a padding mask, as `DataCollatorForSeq2Seq` does), the fedhpc
loops pack examples into 6 rows of up to 512 tokens (`data.packing`) and, as
the worker does on GPUs, pad each batch to a multiple of 64 tokens. Both read
the same example stream; tokens/s counts real tokens, never padding.

Loops, on the same model and batches:
    plain          transformers + peft as a user would write it: `model(..., labels=...).loss`
    fedhpc         the worker's default on this device: `fedhpc.worker.train.train_local_steps`
                   with its chunked loss, and on GPUs `torch.compile` of each decoder layer
                   (`model.compile: auto`, `fedhpc.worker.compiled`)
    fedhpc-eager   the worker's loop without compiling, to tell the two levers apart

MFU is 6·N·tokens/s / --peak-flops with N every parameter of the model, frozen
or not (default 989e12, the H100/H200 SXM dense bf16 datasheet figure). 6·N is
the usual convention; a LoRA step does no weight-gradient matmuls for frozen
weights (about 4·N) and checkpointing recomputes the forward (about +2·N), so it
compares runs and is not a hardware efficiency.

`--profile` adds, per case, the GPU time of 3 more steps by kernel family
(matmul, attention, compiled/fused, element-wise, optimizer, ...) and the top
kernels, from `torch.profiler`. `--tiny` swaps every case's model for a 2-layer
Llama, sequence 64, micro-batch 2, on the CPU unless CUDA is there: it checks
the script, not a throughput. Prints one JSON line:

    {"bench": "gpu_throughput", "loop": ..., "device": ..., "cases": {"lora-7b": {"tokens_per_s", "mfu",
     "step_s", "warmup_s", "peak_memory_gb", "params", "trainable_params", "losses", ...}, ...}}

A case that fails (out of memory, a compile error) is reported as {"error": ...} and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from fedhpc.exchange import TrainSettings
from fedhpc.worker.compiled import compile_decoder_layers, wants_compile
from fedhpc.worker.data import IGNORE_INDEX, Batch, Tokenized, collate, pack_rows
from fedhpc.worker.device import length_multiple
from fedhpc.worker.distributed import RankEnv
from fedhpc.worker.train import train_local_steps

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
# lora-7b-var's examples: log-normal lengths (median, σ, bounds) and the prompt's share of each.
VAR_MEDIAN, VAR_SIGMA, VAR_MIN, PROMPT_SHARE = 160, 0.6, 16, 0.6
PROFILED_STEPS = 3


@dataclass(frozen=True)
class Case:
    shape: str
    lora: bool
    checkpointing: bool
    varied: bool = False  # instruction-like examples of varying length instead of full rows


CASES: dict[str, Case] = {
    "lora-7b": Case("llama2-7b", lora=True, checkpointing=False),
    "lora-7b-ckpt": Case("llama2-7b", lora=True, checkpointing=True),
    "lora-7b-var": Case("llama2-7b", lora=True, checkpointing=False, varied=True),
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
    profile: bool
    length_multiple: int | None  # lora-7b-var's padding multiple; None: the loop's own (64 for the worker on GPUs)


def build_model(case: Case, settings: Settings) -> torch.nn.Module:
    """Random init straight on the device: LoRA's frozen base in bf16, full fine-tuning's master weights in fp32."""
    shape = SHAPES["tiny" if settings.tiny else case.shape]
    config = LlamaConfig(**shape, max_position_embeddings=max(settings.seq_len, 2048))
    dtype = torch.bfloat16 if case.lora else torch.float32
    torch.manual_seed(0)
    with torch.device(settings.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    if case.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if case.lora:  # peft keeps the adapters in fp32 (autocast_adapter_dtype), the base frozen
        lora = LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, target_modules=LORA_TARGETS,
                          lora_dropout=0.0, task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(model, lora)
    return model.train()


class Batches:
    """Seeded micro-batches for a case, the same for every loop; counts the real (non-padding) tokens drawn."""

    def __init__(self, case: Case, settings: Settings, vocab_size: int, packed: bool, length_multiple: int = 1):
        self.settings, self.vocab_size, self.length_multiple = settings, vocab_size, length_multiple
        self.tokens = 0
        self._stream = self._varied(packed) if case.varied else self._full_rows()

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch, real = next(self._stream)
        self.tokens += real
        return batch

    def _full_rows(self) -> Iterator[tuple[Batch, int]]:
        s = self.settings
        generator = torch.Generator().manual_seed(1)
        while True:
            ids = torch.randint(0, self.vocab_size, (s.micro_batch, s.seq_len), generator=generator)
            yield Batch(ids, ids, attention_mask=None, position_ids=None, num_examples=s.micro_batch), ids.numel()

    def _varied(self, packed: bool) -> Iterator[tuple[Batch, int]]:
        rows = pack_rows(self._examples(), self.settings.seq_len, packing=packed)
        while True:
            batch_rows = [next(rows) for _ in range(self.settings.micro_batch)]
            real = sum(len(item.input_ids) for row in batch_rows for item in row)
            batch = collate(batch_rows, pad_id=0, packed=packed, length_multiple=self.length_multiple,
                            max_length=self.settings.seq_len)  # fmt: skip
            yield batch, real

    def _examples(self) -> Iterator[Tokenized]:
        lengths = random.Random(2)
        generator = torch.Generator().manual_seed(3)
        seq_len = self.settings.seq_len
        while True:
            length = min(seq_len, max(VAR_MIN, round(lengths.lognormvariate(0, VAR_SIGMA) * VAR_MEDIAN)))
            if self.settings.tiny:
                length = max(4, length * seq_len // 512)
            ids = torch.randint(0, self.vocab_size, (length,), generator=generator).tolist()
            prompt = int(length * PROMPT_SHARE)
            yield Tokenized(ids, [IGNORE_INDEX] * prompt + ids[prompt:])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    """GPU: the allocator's peak since the case began; CPU: the process's peak RSS (all cases so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# A loop trains `steps` steps on `batches` and returns their losses; it keeps its optimizer between calls.
Loop = Callable[[Batches, int], list[float]]


def plain_loop(model: torch.nn.Module, settings: Settings) -> Loop:
    """transformers + peft, one process, no framework: what a user writes first."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=settings.device.type == "cuda")

    def train(batches: Batches, steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            batch = next(batches)
            with torch.autocast(device_type=settings.device.type, dtype=torch.bfloat16):
                loss = model(**batch.model_inputs(settings.device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        return [float(loss) for loss in losses]

    return train


def worker_loop(model: torch.nn.Module, settings: Settings) -> Loop:
    """The worker's `train_local_steps` (chunked loss, fused AdamW, per-step loss read) on this model.

    Compute dtype bf16, as the worker's on GPUs for LoRA on a bf16 base and for
    full fine-tuning (`model.full.compute_dtype: auto`): autocast, like the plain loop.
    """
    kept: list[torch.optim.Optimizer] = []

    def train(batches: Batches, steps: int) -> list[float]:
        result = train_local_steps(
            model, batches, TrainSettings(local_steps=steps, lr=1e-4, batch_size=settings.micro_batch),
            settings.device, RankEnv(), torch.bfloat16, optimizer=kept[0] if kept else None,
        )  # fmt: skip
        kept[:] = [result.optimizer]
        return result.losses

    return train


def run_case(case: Case, loop_name: str, settings: Settings) -> dict[str, Any]:
    if settings.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings.device)
    model = build_model(case, settings)
    compiled = loop_name == "fedhpc" and wants_compile("auto", settings.device)
    if compiled:
        compile_decoder_layers(model)
    loop = plain_loop(model, settings) if loop_name == "plain" else worker_loop(model, settings)
    worker = loop_name != "plain"  # the worker packs (data.packing) and pads lengths to a multiple on GPUs
    multiple = settings.length_multiple or (length_multiple(settings.device) if worker else 1)
    batches = Batches(case, settings, model.config.vocab_size, packed=case.varied and worker, length_multiple=multiple)
    start = time.perf_counter()
    losses = loop(batches, settings.warmup)
    synchronize(settings.device)
    warmup_s = time.perf_counter() - start
    batches.tokens = 0
    start = time.perf_counter()
    losses += loop(batches, settings.steps)
    synchronize(settings.device)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    tokens_per_s = batches.tokens / seconds
    result = {
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": float(f"{6 * params * tokens_per_s / settings.peak_flops:.3g}"),
        "step_s": round(seconds / settings.steps, 4),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_gb": round(peak_memory_gb(settings.device), 2),
        "params": params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "compiled": compiled,
        "packed": case.varied and worker,
        "losses": [round(loss, 4) for loss in losses],
    }
    if settings.profile and settings.device.type == "cuda":
        result["profile"] = profile_steps(loop, batches)
    del model, loop, batches
    release(settings.device)
    return result


# Kernel families by name, first match wins: what each share of a step's GPU time is spent on.
KERNEL_FAMILIES: list[tuple[str, tuple[str, ...]]] = [
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
    ("compiled (triton)", ("triton",)),
    ("optimizer", ("adam", "multi_tensor")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "splitk")),
    ("loss (softmax, nll)", ("softmax", "nll", "cross_entropy")),
    ("copy / cast", ("copy", "cast", "convert")),
    ("element-wise / reduction (eager)", ("elementwise", "reduce", "vectorized", "unrolled")),
]


def kernel_family(name: str) -> str:
    lowered = name.lower()
    for family, needles in KERNEL_FAMILIES:
        if any(needle in lowered for needle in needles):
            return family
    return "other"


def profile_steps(loop: Loop, batches: Batches) -> dict[str, Any]:
    """GPU time per step by kernel family and the costliest kernels, over `PROFILED_STEPS` steps."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            loop(batches, PROFILED_STEPS)
            torch.cuda.synchronize()
    except RuntimeError as e:
        return {"error": str(e)[:300]}
    families: dict[str, float] = {}
    kernels: list[tuple[str, float]] = []
    for event in prof.key_averages():
        micros = getattr(event, "self_device_time_total", 0) or 0
        if micros <= 0:
            continue
        ms = micros / 1000 / PROFILED_STEPS
        family = kernel_family(event.key)
        families[family] = families.get(family, 0.0) + ms
        kernels.append((event.key[:100], ms))
    kernels.sort(key=lambda item: -item[1])
    return {
        "gpu_ms_per_step": round(sum(families.values()), 2),
        "families_ms_per_step": {k: round(v, 2) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": [[name, round(ms, 2)] for name, ms in kernels[:12]],
    }


def release(device: torch.device) -> None:
    """Free what a case held, so the next case's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(name: str, loop: str, settings: Settings) -> dict[str, Any]:
    log.info("%s (%s loop) ...", name, loop)
    try:
        result = run_case(CASES[name], loop, settings)
    except torch.cuda.OutOfMemoryError:
        release(settings.device)
        return {"error": "out of memory"}
    except Exception as e:  # noqa: BLE001 - one case's failure (a compile error, say) must not lose the others
        log.exception("%s failed", name)
        release(settings.device)
        return {"error": f"{type(e).__name__}: {str(e)[:500]}"}
    log.info("%s: %s", name, {k: v for k, v in result.items() if k not in ("losses", "profile")})
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
        profile=args.profile,
        length_multiple=args.length_multiple,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=["lora-7b", "lora-7b-ckpt", "full-1b"])
    parser.add_argument("--loop", choices=["plain", "fedhpc", "fedhpc-eager"], default="fedhpc")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 3 with --tiny)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=6)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--peak-flops", type=float, default=989e12, help="the device's peak bf16 FLOP/s (dense)")
    parser.add_argument("--length-multiple", type=int, default=None,
                        help="lora-7b-var: pad batch lengths to a multiple of this (default: 64 for fedhpc on GPUs)")
    parser.add_argument("--profile", action="store_true", help="GPU time by kernel family over 3 more steps")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps: a smoke check, CPU is fine")
    args = parser.parse_args()
    settings = settings_from(args)
    device_name = torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else "cpu"
    cases = {name: measure(name, args.loop, settings) for name in args.cases}
    print(json.dumps({
        "bench": "gpu_throughput", "loop": args.loop, "device": device_name, "tiny": args.tiny,
        "torch": torch.__version__, "seq_len": settings.seq_len, "micro_batch": settings.micro_batch,
        "steps": settings.steps, "warmup": settings.warmup, "peak_flops": settings.peak_flops,
        "length_multiple": settings.length_multiple, "cases": cases,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
