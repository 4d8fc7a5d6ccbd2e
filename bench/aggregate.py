"""Benchmark the server's streaming FedAvg: K updates in, a new fp32 global directory out.

    .venv/bin/python bench/aggregate.py --updates 4 --params 250e6 --dtype bfloat16 [--tmp DIR] [--cold]

A child process first writes a Llama-shaped fp32 global and K updates of P
parameters (in --dtype) with fedhpc's exchange writer, so its memory does not
count here. Then this process opens them and times exactly what the server
does after verification: `write_exchange(dest, layout, FedAvg().aggregate(...))`,
i.e. read every update tensor by tensor, accumulate in fp32, write and hash (BLAKE3)
the new global, fsync, rename. It prints one JSON line (GB = 1e9 bytes):

    {"bench": "aggregate", "updates": K, "params": P, "dtype": ..., "seconds": ...,
     "update_gb": K·P·itemsize, "gb_per_s": update_gb / seconds,
     "peak_rss_gb": VmHWM during the aggregation, "rss_before_gb": VmRSS just before it}

By default the inputs are in the page cache (they were just written, as updates
just pulled by the server usually are); --cold evicts them first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedhpc.aggregate import FedAvg, Update
from fedhpc.exchange import ExchangeDir, ExchangeMeta, TensorLayout, write_exchange

HIDDEN, KV, INTERMEDIATE = 4096, 1024, 14336  # Llama-3-8B
FINGERPRINT = "sha256:" + "be" * 32


def llama_layout(params: int, dtype: torch.dtype) -> list[TensorLayout]:
    """Llama-3-8B decoder layers, in checkpoint order, cut off once `params` are reached (the last matrix by rows)."""
    per_layer = [
        ("input_layernorm.weight", (HIDDEN,)),
        ("self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
        ("self_attn.k_proj.weight", (KV, HIDDEN)),
        ("self_attn.v_proj.weight", (KV, HIDDEN)),
        ("self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
        ("post_attention_layernorm.weight", (HIDDEN,)),
        ("mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
        ("mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
        ("mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
    ]
    layout: list[TensorLayout] = []
    remaining, layer = params, 0
    while remaining > 0:
        for suffix, shape in per_layer:
            rows = min(shape[0], remaining // (shape[1] if len(shape) == 2 else 1))
            if rows == 0:
                return layout
            shape = (rows, *shape[1:])
            layout.append(TensorLayout(f"model.layers.{layer}.{suffix}", dtype, shape))
            remaining -= rows * (shape[1] if len(shape) == 2 else 1)
            if remaining == 0:
                return layout
        layer += 1
    return layout


def count(layout: list[TensorLayout]) -> int:
    return sum(item.nbytes // torch.empty((), dtype=item.dtype).element_size() for item in layout)


def generate(root: Path, updates: int, params: int, dtype: torch.dtype) -> None:
    """Write the global and the updates, one tensor in memory at a time."""

    def tensors(layout: list[TensorLayout], seed: int):
        generator = torch.Generator().manual_seed(seed)
        for item in layout:
            yield item.name, torch.empty(item.shape).uniform_(-0.05, 0.05, generator=generator).to(item.dtype)

    global_layout = llama_layout(params, torch.float32)
    write_exchange(root / "global", global_layout, tensors(global_layout, 0), ExchangeMeta(kind="global", round=0, base_fingerprint=FINGERPRINT))
    update_layout = llama_layout(params, dtype)
    for k in range(updates):
        meta = ExchangeMeta(
            kind="update", round=1, facility=f"f{k}", based_on_round=0, num_samples=100 * (k + 1), local_steps=10,
            base_fingerprint=FINGERPRINT,
        )
        write_exchange(root / f"u{k}", update_layout, tensors(update_layout, k + 1), meta)


def proc_status(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match, field
    return int(match.group(1)) * 1024


def evict(directory: Path) -> None:
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def aggregate(root: Path, updates: int, cold: bool) -> dict[str, float]:
    global_ = ExchangeDir(root / "global")
    sources = [ExchangeDir(root / f"u{k}") for k in range(updates)]
    batch = [Update(f"f{k}", s, s.manifest.num_samples, s.manifest.local_steps, 0) for k, s in enumerate(sources)]
    if cold:
        for directory in [global_.path, *(s.path for s in sources)]:
            evict(directory)
    meta = ExchangeMeta(kind="global", round=1, base_fingerprint=FINGERPRINT)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, where the kernel allows it
    except OSError:
        pass
    rss_before = proc_status("VmRSS")
    start = time.perf_counter()
    write_exchange(root / "out", global_.layout(torch.float32), FedAvg("samples").aggregate(global_, batch, {}), meta)
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM")

    # Off the clock: the output is the sample-weighted mean (checked on the last, smallest-or-truncated tensor).
    name = global_.names()[-1]
    total = sum(u.num_samples for u in batch)
    expected = sum(s.get(name).to(torch.float32) * (u.num_samples / total) for s, u in zip(sources, batch))
    torch.testing.assert_close(ExchangeDir(root / "out").get(name), expected, rtol=1e-5, atol=1e-6)
    return {"seconds": seconds, "peak": peak, "rss_before": rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, required=True, help="number of facility updates K")
    parser.add_argument("--params", type=float, required=True, help="parameters per update, e.g. 250e6")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="dtype of the updates")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the model files (default: $TMPDIR)")
    parser.add_argument("--cold", action="store_true", help="evict the inputs from the page cache before timing")
    parser.add_argument("--generate-into", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    params, dtype = int(args.params), getattr(torch, args.dtype)
    if args.updates < 1 or params < 1:
        parser.error("--updates and --params must be positive")

    if args.generate_into is not None:  # the child process
        generate(args.generate_into, args.updates, params, dtype)
        return

    layout = llama_layout(params, dtype)
    params = count(layout)
    itemsize = torch.empty((), dtype=dtype).element_size()
    update_bytes = args.updates * params * itemsize
    needed = update_bytes + 2 * params * 4
    root = Path(tempfile.mkdtemp(prefix="fedhpc-bench-", dir=args.tmp))
    try:
        free = shutil.disk_usage(root).free
        if free < needed * 1.05:
            sys.exit(f"error: {root} has {free / 1e9:.1f} GB free; this run needs {needed / 1e9:.1f} GB (use --tmp)")
        print(f"writing a {params / 1e6:.0f}M-parameter global and {args.updates} {args.dtype} updates to {root} ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, __file__, "--updates", str(args.updates), "--params", str(params), "--dtype", args.dtype,
             "--generate-into", str(root)],
            check=True,
        )
        result = aggregate(root, args.updates, args.cold)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    update_gb = update_bytes / 1e9
    print(json.dumps({
        "bench": "aggregate",
        "updates": args.updates,
        "params": params,
        "dtype": args.dtype,
        "seconds": round(result["seconds"], 3),
        "update_gb": round(update_gb, 3),
        "gb_per_s": round(update_gb / result["seconds"], 3),
        "peak_rss_gb": round(result["peak"] / 1e9, 3),
        "rss_before_gb": round(result["rss_before"] / 1e9, 3),
    }))


if __name__ == "__main__":
    main()
