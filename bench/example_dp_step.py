"""Seconds per optimizer step of the worker's LoRA training, plain and with example-level DP (DP-SGD, Opacus).

    .venv/bin/python bench/example_dp_step.py [--model tiny-llama|smollm2-135m-instruct] [--steps 12]
        [--batch-size 8] [--seq-len 96] [--data examples/quickstart/data/alpha.jsonl]

Both loops train the same freshly built model (the quickstart's tiny Llama, or the demo's SmolLM2-135M with
its LoRA on every projection) on the same examples, in this process, on the CPU: `train_local_steps` (the
worker's loop) and `train_dp_steps` (Poisson batches of the same expected size, per-example gradients,
clipping, noise). The first step of each is left out of the mean (allocation warm-up). Also prints the
example-level ε the quickstart's and the demo's schedules spend (Opacus's RDP accountant, δ = 1e-5). One
JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import torch
from opacus.accountants import RDPAccountant

from fedhpc.config import DataConfig, ModelConfig
from fedhpc.config.example_privacy import ExamplePrivacyConfig
from fedhpc.exchange import TrainSettings
from fedhpc.train_examples import read_examples
from fedhpc.worker.data import batches, encode_example
from fedhpc.worker.distributed import RankEnv
from fedhpc.worker.dp_sgd import train_dp_steps
from fedhpc.worker.model import add_trainable, build_base_model
from fedhpc.worker.train import train_local_steps

DEMO_LORA = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"]}  # fmt: skip


def _model(source: str):
    lora = DEMO_LORA if source != "tiny-llama" else {}
    config = ModelConfig(source=source, dtype="float32", peft="lora", compile=False, lora=lora)
    base = build_base_model(config)
    return add_trainable(base.model, config), base.tokenizer


def _per_step(seconds: list[float]) -> float:
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float = 1e-5) -> float:
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return accountant.get_epsilon(delta=delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=96)
    parser.add_argument("--data", type=Path, default=Path("examples/quickstart/data/alpha.jsonl"))
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    examples = read_examples(args.data)
    settings = TrainSettings(local_steps=args.steps, lr=0.005, batch_size=args.batch_size)
    cpu = torch.device("cpu")

    plain_steps: list[float] = []
    model, tokenizer = _model(args.model)
    last = time.perf_counter()

    def plain_step(step: int, loss: float | None) -> None:
        nonlocal last
        now = time.perf_counter()
        plain_steps.append(now - last)
        last = now

    stream = batches(examples, tokenizer, DataConfig(seq_len=args.seq_len), args.batch_size)
    last = time.perf_counter()
    train_local_steps(model, stream, settings, cpu, RankEnv(), torch.float32, plain_step)

    dp_steps: list[float] = []
    model, tokenizer = _model(args.model)
    tokenized = [encode_example(tokenizer, example, args.seq_len) for example in examples]

    def dp_step(step: int, loss: float | None) -> None:
        nonlocal last
        now = time.perf_counter()
        dp_steps.append(now - last)
        last = now

    privacy = ExamplePrivacyConfig(noise_multiplier=args.noise_multiplier, max_grad_norm=args.max_grad_norm)
    last = time.perf_counter()
    train_dp_steps(model, tokenized, tokenizer.pad_token_id, settings, privacy, cpu, torch.float32, args.steps,
                   on_step=dp_step, max_length=args.seq_len)
    print(json.dumps({
        "bench": "example_dp_step", "model": args.model, "device": "cpu", "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps,
        "plain_s_per_step": round(_per_step(plain_steps), 4), "dp_s_per_step": round(_per_step(dp_steps), 4),
        "dp_over_plain": round(_per_step(dp_steps) / _per_step(plain_steps), 2),
        # the schedules the docs quote, σ = 1: the quickstart (alpha: 240 examples, batch 8, 3 rounds × 12 steps)
        # and the demo (polaris: 600 examples, batch 8, 6 rounds × 15 steps)
        "epsilon_quickstart_alpha": round(epsilon(1.0, 8 / 240, 36), 3),
        "epsilon_quickstart_beta": round(epsilon(1.0, 8 / 160, 36), 3),
        "epsilon_demo_polaris": round(epsilon(1.0, 8 / 600, 90), 3),
        "epsilon_demo_aurora": round(epsilon(1.0, 8 / 200, 90), 3),
    }))


if __name__ == "__main__":
    main()
