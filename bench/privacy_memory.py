"""Peak server memory of a private FedAvg round (DP-FedAvg, fixed clipping, noise on) against K facilities.

    .venv/bin/python bench/privacy_memory.py --updates 2 4 8 --params 50e6 --dtype float32 [--tmp DIR]

bench/aggregate.py's child writes a Llama-shaped fp32 global and max(K) updates of P parameters with
fedhpc's exchange writer. Then, for each K, a fresh process opens the global and the first K updates
and does what the server does after verification with privacy on:
`write_exchange(dest, layout, PrivateAggregation(FedAvg("equal"), privacy, K).aggregate(...))`, i.e. a
first pass that reads every update to measure its norm, a second that sums the clipped changes, adds
noise and writes the new global; and, in another fresh process, the plain `FedAvg("equal")` round for
comparison. The claim checked is that peak memory is flat in K. One JSON line (GB = 1e9 bytes):

    {"bench": "privacy_memory", "params": P, "dtype": ..., "rows": [{"updates": K, "private_peak_rss_gb": ...,
     "private_live_peak_gb": ..., "private_seconds": ..., "plain_peak_rss_gb": ..., "plain_live_peak_gb": ...,
     "plain_seconds": ..., "clipped": ...}, ...]}

peak RSS is the child's VmHWM after its imports, reset where the kernel allows (clear_refs), so it is the
aggregation's own peak plus the interpreter; updates are in the page cache (just written). glibc keeps
freed chunk-sized blocks in its heap and how much it keeps varies from run to run by ~0.1 GB, so each case
also runs with the mmap threshold pinned (`*_live_peak_gb`): that peak is the memory actually in use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from aggregate import FINGERPRINT, count, llama_layout, proc_status
from fedhpc.aggregate import FedAvg, Update
from fedhpc.config.privacy import PrivacyConfig
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_exchange
from fedhpc.privacy import PrivateAggregation

AGGREGATE_SCRIPT = Path(__file__).with_name("aggregate.py")


def measure(root: Path, updates: int, private: bool) -> dict[str, float]:
    """One round over the global and the first `updates` updates in `root`; runs in its own process."""
    global_ = ExchangeDir(root / "global")
    sources = [ExchangeDir(root / f"u{k}") for k in range(updates)]
    batch = [Update(f"f{k}", s, s.manifest.num_samples, s.manifest.local_steps, 0) for k, s in enumerate(sources)]
    # C below the updates' norms (uniform ±0.05 around a different draw: ‖Δ‖ ≈ 0.04·√P) so every one is clipped
    privacy = PrivacyConfig(noise_multiplier=1.0, clipping={"clip_norm": 1.0}, noise_seed=0)
    aggregator = PrivateAggregation(FedAvg("equal"), privacy, updates) if private else FedAvg("equal")
    out = root / f"out-{updates}-{'private' if private else 'plain'}"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, where the kernel allows it
    except OSError:
        pass
    start = time.perf_counter()
    write_exchange(out, global_.layout(torch.float32), aggregator.aggregate(global_, batch, {}),
                   ExchangeMeta(kind="global", round=1, base_fingerprint=FINGERPRINT))
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak": proc_status("VmHWM")}
    if private:
        result["clipped"] = aggregator.last_round.clipped
    shutil.rmtree(out)
    return result


def child(root: Path, updates: int, private: bool, live: bool) -> dict[str, float]:
    """One measurement in a fresh process; `live`: with glibc's mmap threshold pinned at 1 MiB, so every freed
    tensor goes back to the OS at once and the peak is the memory in use, not the allocator's cached heap."""
    command = [sys.executable, __file__, "--measure", str(root), "--updates", str(updates)]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if live else None
    output = subprocess.run(command + (["--private"] if private else []), check=True, capture_output=True, text=True,
                            env=environment)
    return json.loads(output.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, nargs="+", default=[2, 4, 8], help="facility counts K")
    parser.add_argument("--params", type=float, default=50e6, help="parameters per update")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="float32", help="dtype of the updates")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the model files (default: $TMPDIR)")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--private", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:  # a measuring child
        print(json.dumps(measure(args.measure, args.updates[0], args.private)))
        return
    if min(args.updates) < 1 or args.params < 1:
        parser.error("--updates and --params must be positive")
    params = count(llama_layout(int(args.params), torch.float32))
    root = Path(tempfile.mkdtemp(prefix="fedhpc-bench-privacy-", dir=args.tmp))
    rows = []
    try:
        print(f"writing a {params / 1e6:.0f}M-parameter global and {max(args.updates)} updates to {root} ...",
              file=sys.stderr)
        subprocess.run([sys.executable, str(AGGREGATE_SCRIPT), "--updates", str(max(args.updates)), "--params",
                        str(params), "--dtype", args.dtype, "--generate-into", str(root)], check=True)
        for updates in sorted(args.updates):
            private, plain = child(root, updates, True, False), child(root, updates, False, False)
            private_live, plain_live = child(root, updates, True, True), child(root, updates, False, True)
            rows.append({
                "updates": updates,
                "private_peak_rss_gb": round(private["peak"] / 1e9, 3),
                "private_live_peak_gb": round(private_live["peak"] / 1e9, 3),
                "private_seconds": round(private["seconds"], 2),
                "plain_peak_rss_gb": round(plain["peak"] / 1e9, 3),
                "plain_live_peak_gb": round(plain_live["peak"] / 1e9, 3),
                "plain_seconds": round(plain["seconds"], 2),
                "clipped": private["clipped"],
            })
            print(f"K={updates}: {rows[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"bench": "privacy_memory", "params": params, "dtype": args.dtype, "rows": rows}))


if __name__ == "__main__":
    main()
