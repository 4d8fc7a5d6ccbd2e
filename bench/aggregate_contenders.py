"""One aggregation contender per process, so that the parent can read each one's own peak RSS.

    PYTHON bench/aggregate_contenders.py CONTENDER --root DIR --updates K

Run by bench/aggregate_compare.py, never by hand: DIR holds what it generated
(`global/` and `u0..u{K-1}/`, fedhpc exchange directories whose shards are
plain safetensors files, plus `pt/u{k}.pt` and `pt/global.pt`, the same tensors
as torch.save'd state dicts, for APPFL). Each contender goes from update files
on disk to a new global serialized the way its framework ships it, and prints
one JSON line: the seconds, the phases it has, its baseline RSS (after imports,
before any benchmark work) and the L2 norm of the new global's last tensor (the
parent checks that all contenders computed the same mean).

    fedhpc   FedAvg("samples") streamed tensor by tensor into a new fp32 global
             exchange directory (write_exchange: BLAKE3, fsync, rename); runs in
             the project's .venv
    fedhpc-reduce  the same reduction, the new tensors dropped instead of
             written: the difference is what writing the global durably costs
    appfl    FedAvgAggregator (client_weights_mode=sample_size) holding the
             global state in memory as its server does; every update loaded
             with torch.load (APPFL's communicators deserialize with torch.load),
             aggregate(local_models), then torch.save of the new global into a
             buffer (what its gRPC server sends); runs in bench/.venv-compare
    flower   flwr.server.strategy.aggregate.aggregate on NumPy arrays read from
             the safetensors shards (bf16 becomes fp32: NumPy has no bfloat16),
             then ndarrays_to_parameters; runs in bench/.venv-compare
    numpy    the bandwidth reference: every update byte read once into a NumPy
             buffer and copied once (what any reducer must at least do)

This file imports neither fedhpc nor the frameworks at module level, so each
environment only needs what its own contender uses.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.aggregate_contenders")
COPY_CHUNK = 64 * 1024 * 1024  # bytes per read in the NumPy reference: big enough to stream, small against the data


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS); the peak comes from the parent's wait4."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match, "no VmRSS in /proc/self/status"
    return int(match.group(1)) * 1024


def manifest(directory: Path) -> dict[str, Any]:
    """The exchange manifest as plain JSON: the non-fedhpc contenders read it without importing fedhpc."""
    return json.loads((directory / "manifest.json").read_text())


def shard_paths(directory: Path) -> list[Path]:
    return [directory / name for name in manifest(directory)["files"]]


def samples(root: Path, updates: int) -> list[int]:
    """num_samples of each update, from its manifest: every contender weights by samples, like fedhpc's FedAvg."""
    return [manifest(root / f"u{k}")["num_samples"] for k in range(updates)]


def l2(values: Any) -> float:
    """L2 norm in float64, for a tensor or an ndarray (the cross-contender check)."""
    import numpy as np

    array = values.double().numpy() if hasattr(values, "double") else np.asarray(values, dtype=np.float64)
    return float(math.sqrt(float((array * array).sum())))


def run_fedhpc(root: Path, updates: int) -> dict[str, Any]:
    """What the server does after verification: stream the weighted mean into a new global directory."""
    import torch

    from fedhpc.aggregate import FedAvg, Update
    from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_exchange

    baseline = rss_bytes()
    out = root / "out-fedhpc"
    global_ = ExchangeDir(root / "global")
    sources = [ExchangeDir(root / f"u{k}") for k in range(updates)]
    batch = [Update(f"f{k}", s, s.manifest.num_samples, s.manifest.local_steps, 0) for k, s in enumerate(sources)]
    meta = ExchangeMeta(kind="global", round=1, base_fingerprint=global_.manifest.base_fingerprint)
    start = time.perf_counter()
    write_exchange(out, global_.layout(torch.float32), FedAvg("samples").aggregate(global_, batch, {}), meta)
    seconds = time.perf_counter() - start
    check = l2(ExchangeDir(out).get(global_.names()[-1]))
    shutil.rmtree(out)
    return {"seconds": seconds, "baseline_rss": baseline, "check_l2": check}


def run_fedhpc_reduce(root: Path, updates: int) -> dict[str, Any]:
    """The same reduction with the new global's tensors dropped instead of written: what the writing costs."""
    import torch  # noqa: F401

    from fedhpc.aggregate import FedAvg, Update
    from fedhpc.exchange import ExchangeDir

    baseline = rss_bytes()
    global_ = ExchangeDir(root / "global")
    sources = [ExchangeDir(root / f"u{k}") for k in range(updates)]
    batch = [Update(f"f{k}", s, s.manifest.num_samples, s.manifest.local_steps, 0) for k, s in enumerate(sources)]
    last_name, check = global_.names()[-1], 0.0
    start = time.perf_counter()
    for name, tensor in FedAvg("samples").aggregate(global_, batch, {}):
        if name == last_name:
            check = l2(tensor)
        del tensor  # before the next one is reduced, as write_exchange does
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "baseline_rss": baseline, "check_l2": check}


def run_appfl(root: Path, updates: int) -> dict[str, Any]:
    """APPFL's FedAvgAggregator in its steady state: the global is resident, K state dicts arrive by torch.load."""
    import torch
    from appfl.algorithm.aggregator import FedAvgAggregator
    from omegaconf import DictConfig

    baseline = rss_bytes()
    aggregator = FedAvgAggregator(None, DictConfig({"client_weights_mode": "sample_size"}))
    aggregator.global_state = torch.load(root / "pt" / "global.pt", map_location="cpu")  # the server's model state
    for k, count in enumerate(samples(root, updates)):
        aggregator.set_client_sample_size(f"f{k}", count)
    start = time.perf_counter()
    local_models = {f"f{k}": torch.load(root / "pt" / f"u{k}.pt", map_location="cpu") for k in range(updates)}
    loaded = time.perf_counter()
    new_global = aggregator.aggregate(local_models)
    aggregated = time.perf_counter()
    buffer = io.BytesIO()
    torch.save(new_global, buffer)  # appfl.comm.grpc.utils.serialize_model
    end = time.perf_counter()
    check = l2(new_global[list(new_global)[-1]])
    return {
        "seconds": end - start,
        "phases": {"load": loaded - start, "aggregate": aggregated - loaded, "serialize": end - aggregated},
        "baseline_rss": baseline,
        "check_l2": check,
    }


def flower_arrays(directory: Path) -> Iterator[Any]:
    """An update's tensors as NumPy arrays in manifest order; bf16 goes through torch to fp32 (NumPy has no bf16)."""
    import torch
    from safetensors import safe_open

    entries = manifest(directory)["tensors"]
    handles = {name: safe_open(directory / name, framework="pt") for name in manifest(directory)["files"]}
    for name, entry in entries.items():
        tensor = handles[entry["file"]].get_tensor(name)
        yield tensor.numpy() if tensor.dtype == torch.float32 else tensor.float().numpy()
        del tensor


def run_flower(root: Path, updates: int) -> dict[str, Any]:
    """Flower's FedAvg math: all K updates as lists of ndarrays with their sample counts, then `aggregate`."""
    import safetensors  # noqa: F401  (imported before the clock, like torch below)
    import torch  # noqa: F401
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy.aggregate import aggregate

    baseline = rss_bytes()
    counts = samples(root, updates)
    start = time.perf_counter()
    results = [(list(flower_arrays(root / f"u{k}")), counts[k]) for k in range(updates)]
    loaded = time.perf_counter()
    new_global = aggregate(results)
    aggregated = time.perf_counter()
    ndarrays_to_parameters(new_global)  # what the strategy hands back to the server to send
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "phases": {"load": loaded - start, "aggregate": aggregated - loaded, "serialize": end - aggregated},
        "baseline_rss": baseline,
        "check_l2": l2(new_global[-1]),
    }


def run_numpy(root: Path, updates: int) -> dict[str, Any]:
    """Read every update byte once and copy it once: the floor for any reducer on this machine."""
    import numpy as np

    baseline = rss_bytes()
    buffer, target = np.empty(COPY_CHUNK, np.uint8), np.empty(COPY_CHUNK, np.uint8)
    start = time.perf_counter()
    for path in (p for k in range(updates) for p in shard_paths(root / f"u{k}")):
        with open(path, "rb", buffering=0) as handle:
            while (count := handle.readinto(memoryview(buffer))) > 0:
                np.copyto(target[:count], buffer[:count])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "baseline_rss": baseline}


CONTENDERS: dict[str, Callable[[Path, int], dict[str, Any]]] = {
    "fedhpc": run_fedhpc,
    "fedhpc-reduce": run_fedhpc_reduce,
    "appfl": run_appfl,
    "flower": run_flower,
    "numpy": run_numpy,
}


def write_appfl_inputs(root: Path, updates: int) -> None:
    """torch.save each update (and the global, in the updates' dtype: APPFL's global is the model's state dict).

    One state dict in memory at a time; run in the project's .venv right after generation.
    """
    import torch

    from fedhpc.exchange import ExchangeDir

    (root / "pt").mkdir(exist_ok=True)
    dtype = None
    for k in range(updates):
        source = ExchangeDir(root / f"u{k}")
        state = {name: source.get(name) for name in source.names()}
        dtype = next(iter(state.values())).dtype
        torch.save(state, root / "pt" / f"u{k}.pt")
        del state
        gc.collect()
    global_ = ExchangeDir(root / "global")
    torch.save({name: global_.get(name).to(dtype) for name in global_.names()}, root / "pt" / "global.pt")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("contender", choices=[*CONTENDERS, "write-appfl-inputs"])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--updates", type=int, required=True)
    args = parser.parse_args()
    if args.contender == "write-appfl-inputs":
        write_appfl_inputs(args.root, args.updates)
        return
    result = CONTENDERS[args.contender](args.root, args.updates)
    log.info("%s: %.2f s", args.contender, result["seconds"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
