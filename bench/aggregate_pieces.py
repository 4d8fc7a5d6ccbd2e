"""The piecewise reduction against the tensor-at-a-time one and the copy floor, interleaved in one process.

    .venv/bin/python bench/aggregate_pieces.py [--updates 8] [--repeat 4] [--tmp DIR]

Writes K bf16 updates of one 4096 x 14336 tensor (a Llama-3-8B MLP matrix, 117 MB each) with
fedhpc's writer, then runs, --repeat rounds in turn on the same files (in the page cache):

    numpy       every update byte read once and copied once in 64 MiB pieces (aggregate_contenders' floor)
    tensorwise  `streaming._tensorwise_sum`: each update's whole tensor read, then added in 16 MiB chunks
                (the loop before issue 21)
    piecewise   `streaming.weighted_sum`: 1M-element pieces, every update's piece added while the
                accumulator's piece is in cache, pieces shared over one thread per core

and checks that both reductions agree bit for bit. Prints one JSON line: min and median seconds per
variant, and each reduction's time over numpy's taken round by round (min, median).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedhpc.aggregate import streaming
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict

META = ExchangeMeta(kind="update", round=1, facility="f", based_on_round=0, num_samples=1,
                    base_fingerprint="sha256:" + "1" * 64)  # fmt: skip


def copy_floor(files: list[Path]) -> None:
    buffer, target = np.empty(64 << 20, np.uint8), np.empty(64 << 20, np.uint8)
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while (count := handle.readinto(memoryview(buffer))) > 0:
                np.copyto(target[:count], buffer[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="fedhpc-bench-pieces-", dir=args.tmp))
    try:
        generator = torch.Generator().manual_seed(0)
        dirs = []
        for k in range(args.updates):
            write_state_dict(work / f"u{k}", {"w": torch.randn(4096, 14336, generator=generator).bfloat16()}, META)
            dirs.append(ExchangeDir(work / f"u{k}"))
        terms = [(f"f{k}", d, 1.0 / args.updates) for k, d in enumerate(dirs)]
        files = [work / f"u{k}" / name for k, d in enumerate(dirs) for name in d.manifest.files]
        variants = {
            "numpy": lambda: copy_floor(files),
            "tensorwise": lambda: streaming._tensorwise_sum("w", terms),
            "piecewise": lambda: streaming.weighted_sum("w", terms),
        }
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
        same = torch.equal(streaming._tensorwise_sum("w", terms), streaming.weighted_sum("w", terms))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = {
        name: [ours / floor for ours, floor in zip(seconds[name], seconds["numpy"], strict=True)]
        for name in ("tensorwise", "piecewise")
    }
    print(json.dumps({
        "bench": "aggregate_pieces", "updates": args.updates, "update_gb": round(args.updates * 4096 * 14336 * 2 / 1e9, 3),
        "threads": streaming.THREADS, "bit_identical": same,
        "seconds": {name: {"min": round(min(v), 3), "median": round(statistics.median(v), 3)} for name, v in seconds.items()},
        "over_numpy": {name: {"min": round(min(v), 2), "median": round(statistics.median(v), 2)} for name, v in ratios.items()},
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
