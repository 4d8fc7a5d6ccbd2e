"""What fedhpc's exchange format costs: writing and verifying one update, against torch.save and raw safetensors.

    .venv/bin/python bench/exchange.py [--gb 1] [--dtype bfloat16] [--repeat 2] [--cold] [--tmp DIR]

One Llama-shaped state dict of about --gb GB (1 by default; 1 to 4 is the
size of a full fine-tuning update's shard) is built in memory once, then each
format writes it and reads it back, --repeat rounds with the formats interleaved
(fedhpc, torch, safetensors, fedhpc, ...) so that a slow spell of a shared machine
hits every format alike; the best and the median of each time are reported, and the
ratio to raw safetensors is taken round by round (a pair from the same moment):

    fedhpc       write_state_dict (streaming writer, BLAKE3 while writing, fsync,
                 manifest last, atomic rename); read = ExchangeDir(...).verify()
                 (BLAKE3 of every shard, headers against the manifest, every
                 tensor read and checked finite), the gate every update passes
    torch        torch.save; read = torch.load(weights_only=True) + the same finiteness check
    safetensors  safetensors.torch.save_file; read = load_file + the same finiteness check

The raw formats' reads include the finiteness check because load_file alone
returns tensors backed by a memory map without reading a byte (`load_only_s`
reports it), and an update from another site must be looked at before it
counts; the difference that remains is fedhpc's checksums and header checks.

fedhpc's files are fsynced before they are published (a crash must not leave a
torn update behind a complete manifest), so every writer is timed with an fsync
of what it wrote: `write_s`; the raw formats also report `write_nofsync_s`.
By default reads come from the page cache (the file was just written, as a
just-pulled update is); --cold evicts it first. Prints one JSON line (GB = 1e9 bytes):

    {"bench": "exchange", "gb": ..., "formats": {"fedhpc": {"write_s", "read_s"}, ...},  (best of the rounds)
     "median": the same fields, median of the rounds,
     "fedhpc_over_safetensors": (fedhpc write+read) / (safetensors write+read), like for like, best times,
     "fedhpc_over_safetensors_pairs": {"min", "median"} of that ratio taken round by round,
     "fedhpc_over_safetensors_alone": (fedhpc write+read) / (save_file + load_file, no fsync, no check),
     "fedhpc_write_over_torch_save": fedhpc write_s / torch write_s (both fsynced)}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aggregate import FINGERPRINT, llama_layout
from fedhpc.exchange.reader import all_finite
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict

log = logging.getLogger("bench.exchange")
State = dict[str, torch.Tensor]
META = ExchangeMeta(kind="update", round=1, facility="f0", based_on_round=0, num_samples=100, local_steps=10,
                    base_fingerprint=FINGERPRINT)  # fmt: skip


def build_state(gb: float, dtype: torch.dtype) -> State:
    """Llama-shaped tensors of `gb` GB, random so that nothing compresses or short-circuits."""
    params = int(gb * 1e9) // torch.empty((), dtype=dtype).element_size()
    generator = torch.Generator().manual_seed(0)
    return {
        item.name: torch.empty(item.shape).uniform_(-0.05, 0.05, generator=generator).to(dtype)
        for item in llama_layout(params, dtype)
    }


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file in a directory and the directory itself."""
    for target in [*sorted(path.iterdir()), path] if path.is_dir() else [path]:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(path: Path) -> None:
    """Drop the (clean, fsynced) pages of `path` from the page cache, so the next read goes to the disk."""
    for target in sorted(path.iterdir()) if path.is_dir() else [path]:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_fedhpc(state: State, path: Path) -> None:
    write_state_dict(path, state, META)


def read_fedhpc(path: Path) -> State:
    """The gate: sha256, headers, finiteness. Returns nothing to check: verify already read every tensor."""
    ExchangeDir(path).verify()
    return {}


def write_torch(state: State, path: Path) -> None:
    torch.save(state, path)


def read_torch(path: Path) -> State:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_safetensors(state: State, path: Path) -> None:
    save_file(state, path)


def read_safetensors(path: Path) -> State:
    return load_file(path)  # tensors backed by a memory map: no byte is read until used


def check_finite(state: State) -> None:
    """What the raw formats' readers add to reach the gate minus the checksum: every value looked at once.

    The same check `ExchangeDir.verify` makes (`all_finite`), so the difference is the checksums alone.
    """
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise ValueError(f"{name} holds NaN or Inf")


# name: (write, read, whether the writer fsyncs by itself)
FORMATS: dict[str, tuple[Callable[[State, Path], None], Callable[[Path], State], bool]] = {
    "fedhpc": (write_fedhpc, read_fedhpc, True),
    "torch": (write_torch, read_torch, False),
    "safetensors": (write_safetensors, read_safetensors, False),
}


def one_cycle(name: str, state: State, work: Path, cold: bool) -> dict[str, float]:
    """Write, fsync (where the format does not), optionally evict, read and check; the path is removed afterwards."""
    write, read, fsyncs = FORMATS[name]
    path = work / f"{name}-update"
    start = time.perf_counter()
    write(state, path)
    written = time.perf_counter()
    if not fsyncs:
        fsync_tree(path)
    synced = time.perf_counter()
    if cold:
        evict(path)
    read_start = time.perf_counter()
    loaded = read(path)
    load_end = time.perf_counter()
    check_finite(loaded)
    end = time.perf_counter()
    del loaded
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    times = {"write_s": synced - start, "read_s": end - read_start}
    if not fsyncs:
        times["write_nofsync_s"] = written - start
        times["load_only_s"] = load_end - read_start
    return times


def interleaved(state: State, work: Path, repeat: int, cold: bool) -> dict[str, list[dict[str, float]]]:
    """`repeat` rounds of one cycle per format, in turn: each round's cycles ran at about the same moment."""
    cycles: dict[str, list[dict[str, float]]] = {name: [] for name in FORMATS}
    for round_index in range(repeat):
        for name in FORMATS:
            cycles[name].append(one_cycle(name, state, work, cold))
            log.info("round %d %s: %s", round_index, name, cycles[name][-1])
    return cycles


def summary(cycles: list[dict[str, float]], pick: Callable[[list[float]], float]) -> dict[str, float]:
    return {key: round(pick([c[key] for c in cycles]), 3) for key in cycles[0]}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="update size in GB (1e9 bytes), e.g. 1 to 4")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--repeat", type=int, default=2, help="cycles per format; the best counts")
    parser.add_argument("--cold", action="store_true", help="evict the files from the page cache before reading")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write (default: $TMPDIR)")
    args = parser.parse_args()
    if args.gb <= 0 or args.repeat < 1:
        parser.error("--gb and --repeat must be positive")
    load_before = os.getloadavg()[0]
    state = build_state(args.gb, getattr(torch, args.dtype))
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    work = Path(tempfile.mkdtemp(prefix="fedhpc-bench-exchange-", dir=args.tmp))
    try:
        if shutil.disk_usage(work).free < 2 * nbytes:
            sys.exit(f"error: {work} has too little space for a {nbytes / 1e9:.1f} GB update (use --tmp)")
        cycles = interleaved(state, work, args.repeat, args.cold)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pairs = [(ours["write_s"] + ours["read_s"]) / (raw["write_s"] + raw["read_s"])
             for ours, raw in zip(cycles["fedhpc"], cycles["safetensors"], strict=True)]
    line = report({name: summary(c, min) for name, c in cycles.items()}, nbytes, args) | {
        "median": {name: summary(c, statistics.median) for name, c in cycles.items()},
        "fedhpc_over_safetensors_pairs": {"min": round(min(pairs), 2), "median": round(statistics.median(pairs), 2)},
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(line))


def report(formats: dict[str, dict[str, float]], nbytes: int, args: argparse.Namespace) -> dict[str, object]:
    """The JSON line's body: every format's times and fedhpc's ratios to the others (< 1: fedhpc is faster)."""
    ours, raw, pickled = formats["fedhpc"], formats["safetensors"], formats["torch"]
    ours_total = ours["write_s"] + ours["read_s"]
    return {
        "bench": "exchange", "gb": round(nbytes / 1e9, 3), "dtype": args.dtype, "cold": args.cold,
        "formats": formats,
        "fedhpc_over_safetensors": round(ours_total / (raw["write_s"] + raw["read_s"]), 2),
        "fedhpc_over_safetensors_alone": round(ours_total / (raw["write_nofsync_s"] + raw["load_only_s"]), 2),
        "fedhpc_write_over_torch_save": round(ours["write_s"] / pickled["write_s"], 2),
    }  # fmt: skip


if __name__ == "__main__":
    main()
