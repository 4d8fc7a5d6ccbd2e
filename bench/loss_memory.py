"""Benchmark the worker's chunked causal-LM loss against transformers' loss: peak memory and time.

    .venv/bin/python bench/loss_memory.py [--vocab 32000] [--hidden 1024] [--batch 6] [--seq 512]

transformers materialises [batch, seq, vocab] logits and upcasts them to fp32
for the loss; fedhpc's `CausalLMLoss` projects only the positions that predict a
loss-bearing token, a checkpointed chunk at a time. This measures one forward +
backward of a 1-layer Llama with a Llama-2 (32000) or Llama-3 (128256)
vocabulary on the CPU, where the logits dominate, each way in its own child
process so peak RSS (VmHWM) is per contender. Half of each row is prompt
(labels IGNORE_INDEX), as in instruction tuning. Prints one JSON line:

    {"bench": "loss_memory", "vocab": V, ..., "transformers": {"seconds", "peak_rss_gb", "loss"},
     "fedhpc_chunked": {...}, "peak_ratio": transformers / chunked, "logits_gb": B·T·V·4 / 1e9}
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedhpc.worker.data import IGNORE_INDEX
from fedhpc.worker.loss import CausalLMLoss

CONTENDERS = ("transformers", "fedhpc_chunked")


def peak_rss_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024 / 1e9


def measure(contender: str, vocab: int, hidden: int, batch: int, seq: int) -> dict[str, float]:
    """One forward + backward in this process (run as a child: VmHWM is this contender's alone)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(0, vocab, (batch, seq))
    labels = input_ids.clone()
    labels[:, : seq // 2] = IGNORE_INDEX
    started = time.perf_counter()
    if contender == "transformers":
        loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
    else:
        loss = CausalLMLoss(model)(input_ids=input_ids, labels=labels)
    loss.backward()
    return {"seconds": time.perf_counter() - started, "peak_rss_gb": peak_rss_gb(), "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.vocab, args.hidden, args.batch, args.seq)
    if args.contender:
        print(json.dumps(measure(args.contender, *shape)))
        return
    results = {}
    for contender in CONTENDERS:
        command = [sys.executable, __file__, "--contender", contender, "--vocab", str(args.vocab),
                   "--hidden", str(args.hidden), "--batch", str(args.batch), "--seq", str(args.seq)]  # fmt: skip
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        results[contender] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps({
        "bench": "loss_memory", "vocab": args.vocab, "hidden": args.hidden, "batch": args.batch, "seq": args.seq,
        "logits_gb": args.batch * args.seq * args.vocab * 4 / 1e9, **results,
        "peak_ratio": results["transformers"]["peak_rss_gb"] / results["fedhpc_chunked"]["peak_rss_gb"],
        "same_loss": abs(results["transformers"]["loss"] - results["fedhpc_chunked"]["loss"]) < 1e-4,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
