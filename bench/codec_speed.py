"""What the update codecs cost in CPU time: encode at the facility, decode at the server, per codec.

    .venv/bin/python bench/codec_speed.py [--params 50e6] [--repeat 3]

One fp32 tensor of `--params` N(0, 1e-3) values (a delta's scale), in 4M-value pieces
as a model's tensors would be; for each codec (int8 and nf4 with blocks of 256, topk
at 1%) the best of `--repeat` of: encode seconds, decode seconds, stored bytes and the
ratio to fp32, and the RMS error relative to the delta's RMS. One JSON line on stdout.
torch's intra-op threads as set (`torch.get_num_threads()` is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from fedhpc.config.compression import CompressionConfig
from fedhpc.exchange.codecs import codec_for

PIECE = 4 * 1024 * 1024


def measure(config: CompressionConfig, pieces: list[torch.Tensor], repeat: int) -> dict[str, float]:
    codec = codec_for(config)
    assert codec is not None
    best_encode = best_decode = float("inf")
    stored, squared_error = 0, 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        encoded = [codec.encode(piece) for piece in pieces]
        best_encode = min(best_encode, time.perf_counter() - start)
        start = time.perf_counter()
        decoded = [codec.decode(e.parts, e.params, tuple(p.shape)) for e, p in zip(encoded, pieces)]
        best_decode = min(best_decode, time.perf_counter() - start)
        stored = sum(t.numel() * t.element_size() for e in encoded for t in e.parts.values())
        squared_error = sum(float(((d - p) ** 2).sum()) for d, p in zip(decoded, pieces))
    values = sum(p.numel() for p in pieces)
    rms = (sum(float((p**2).sum()) for p in pieces) / values) ** 0.5
    return {
        "encode_s": round(best_encode, 3),
        "decode_s": round(best_decode, 3),
        "stored_bytes": stored,
        "ratio_vs_fp32": round(values * 4 / stored, 2),
        "relative_rms_error": round((squared_error / values) ** 0.5 / rms, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=50e6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    total = int(args.params)
    g = torch.Generator().manual_seed(0)
    pieces = [torch.randn(min(PIECE, total - start), generator=g) * 1e-3 for start in range(0, total, PIECE)]
    configs = {
        "int8": CompressionConfig(codec="int8", block_size=256),
        "nf4": CompressionConfig(codec="nf4", block_size=256),
        "topk": CompressionConfig(codec="topk", fraction=0.01),
    }
    print(json.dumps({
        "bench": "codec_speed", "params": total, "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0],
        **{name: measure(config, pieces, args.repeat) for name, config in configs.items()},
        "load_after": os.getloadavg()[0],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
