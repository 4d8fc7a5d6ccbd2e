"""fedhpc's streaming FedAvg side by side with APPFL's and Flower's, on the same update bytes.

    .venv/bin/python bench/aggregate_compare.py [--updates 2 4 8] [--params 50e6 250e6]
        [--dtype bfloat16 float32] [--contenders fedhpc fedhpc-reduce appfl flower numpy]
        [--repeat 3] [--tmp DIR]

Needs bench/.venv-compare for APPFL and Flower (`bash bench/setup-compare.sh`);
without it those two are reported as skipped. For each (P, dtype) a child
writes a Llama-shaped fp32 global and max(K) updates with bench/aggregate.py's
generator, plus the same tensors torch.save'd for APPFL; then, for each K,
every contender (bench/aggregate_contenders.py says what each one does) runs in
its own process on the first K updates, with those inputs read once beforehand
so all of them start from the page cache; with --repeat N the contenders run in
turn N times (fedhpc, fedhpc-reduce, ..., numpy, fedhpc, ...), so a slow spell of
the shared machine hits them alike; the fastest run counts, `median_seconds` is
the median, the highest peak is kept, and `over_numpy` gives fedhpc's and
fedhpc-reduce's time over the numpy floor taken round by round (min, median). Peak RSS is the child's ru_maxrss
(os.wait4), so it is that contender's alone, imports included; baseline_rss_gb
is the child's RSS after its imports. A contender whose estimated peak exceeds
80% of MemAvailable is skipped with that reason rather than pushing the machine
into swapless OOM. Prints one JSON line (GB = 1e9 bytes):

    {"bench": "aggregate_compare", "results": [{"updates": K, "params": P, "dtype": ..., "update_gb": ...,
      "contenders": {"fedhpc": {"seconds", "gb_per_s", "peak_rss_gb", "baseline_rss_gb", ...}, ...},
      "appfl_over_fedhpc": {"seconds": ..., "peak_rss": ...}, "check_ok": ...}, ...]}

`check_ok` says every contender's new global agrees (L2 norm of its last tensor within 1%);
`loadavg_1min` is the machine's load before and after (this machine is shared: read the times with it).
This process imports neither torch nor the frameworks: its own memory stays out of the children's peaks.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.aggregate_compare")
BENCH = Path(__file__).resolve().parent
COMPARE_PYTHON = BENCH / ".venv-compare" / "bin" / "python"
ITEMSIZE = {"bfloat16": 2, "float32": 4}
CONTENDERS = ["fedhpc", "fedhpc-reduce", "appfl", "flower", "numpy"]
IN_COMPARE_ENV = {"appfl", "flower"}
MEMORY_FRACTION = 0.8


def mem_available() -> int:
    match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    assert match, "no MemAvailable in /proc/meminfo"
    return int(match.group(1)) * 1024


def estimated_peak(contender: str, updates: int, params: int, itemsize: int) -> int:
    """Bytes a contender holds at its peak, from how it works; only used to skip runs that cannot fit."""
    if contender == "appfl":  # K state dicts, the global, its step, the returned clone, the serialized copy
        return (updates + 4) * params * itemsize
    if contender == "flower":  # K fp32 lists, K weighted copies, the mean, its serialized copy
        return (2 * updates + 2) * params * 4
    return 2 * 1024**3  # streaming: one tensor per update and an fp32 accumulator, plus the interpreter


def generate(root: Path, updates: int, params: float, dtype: str) -> None:
    """Children write the inputs, so the generator's memory never lands in a contender's peak."""
    log.info("writing a %.0fM-parameter global and %d %s updates to %s ...", params / 1e6, updates, dtype, root)
    subprocess.run(
        [sys.executable, str(BENCH / "aggregate.py"), "--updates", str(updates), "--params", str(int(params)),
         "--dtype", dtype, "--generate-into", str(root)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, str(BENCH / "aggregate_contenders.py"), "write-appfl-inputs", "--root", str(root),
         "--updates", str(updates)],
        check=True,
    )  # fmt: skip


def parameter_count(root: Path) -> int:
    """The exact P the generator produced (the Llama layout is cut at whole rows), from the global's manifest."""
    tensors = json.loads((root / "global" / "manifest.json").read_text())["tensors"]
    return sum(math.prod(entry["shape"]) for entry in tensors.values())


def inputs_of(contender: str, root: Path, updates: int) -> list[Path]:
    if contender == "appfl":
        return [root / "pt" / "global.pt", *(root / "pt" / f"u{k}.pt" for k in range(updates))]
    directories = [root / f"u{k}" for k in range(updates)]
    return [path for directory in directories for path in directory.glob("*.safetensors")]


def warm(paths: list[Path]) -> None:
    """Read the inputs once: every contender starts from the page cache, as updates just pulled do."""
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(16 * 1024 * 1024):
                pass


def run_child(contender: str, root: Path, updates: int) -> dict[str, Any]:
    """One contender in its own process; its peak RSS is that process's ru_maxrss (kB on Linux)."""
    python = str(COMPARE_PYTHON) if contender in IN_COMPARE_ENV else sys.executable
    script = str(BENCH / "aggregate_contenders.py")
    command = [python, script, contender, "--root", str(root), "--updates", str(updates)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # not child.wait(): wait4 also returns the child's own rusage
    child.returncode = os.waitstatus_to_exitcode(status)  # so that Popen does not wait for it again
    if child.returncode != 0:
        return {"skipped": f"exited with {child.returncode} (its stderr is above)"}
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss"] = usage.ru_maxrss * 1024
    return result


def best_run(contender: str, root: Path, updates: int, repeat: int) -> dict[str, Any]:
    """The fastest of `repeat` runs (others' load on a shared machine only ever adds time), with the highest peak."""
    runs = []
    for _ in range(repeat):
        warm(inputs_of(contender, root, updates))
        runs.append(run_child(contender, root, updates))
        if "skipped" in runs[-1]:
            return runs[-1]
    best = dict(min(runs, key=lambda run: run["seconds"]))
    best["peak_rss"] = max(run["peak_rss"] for run in runs)
    return best


def measure(contender: str, root: Path, updates: int, params: int, dtype: str, repeat: int) -> dict[str, Any]:
    """Run one contender unless its environment is missing or it would not fit in memory; round for the report."""
    if contender in IN_COMPARE_ENV and not COMPARE_PYTHON.exists():
        return {"skipped": "no bench/.venv-compare: run bash bench/setup-compare.sh"}
    need, available = estimated_peak(contender, updates, params, ITEMSIZE[dtype]), mem_available()
    if need > MEMORY_FRACTION * available:
        return {"skipped": f"needs about {need / 1e9:.1f} GB, {available / 1e9:.1f} GB available"}
    raw = best_run(contender, root, updates, repeat)
    if "skipped" in raw:
        return raw
    update_gb = updates * params * ITEMSIZE[dtype] / 1e9
    result = {
        "seconds": round(raw["seconds"], 3),
        "gb_per_s": round(update_gb / raw["seconds"], 3),
        "peak_rss_gb": round(raw["peak_rss"] / 1e9, 3),
        "baseline_rss_gb": round(raw["baseline_rss"] / 1e9, 3),
    }
    if "phases" in raw:
        result["phases"] = {name: round(seconds, 3) for name, seconds in raw["phases"].items()}
    if "check_l2" in raw:
        result["check_l2"] = raw["check_l2"]
    log.info("K=%d P=%d %s %s: %s", updates, params, dtype, contender, result)
    return result


def summarize(updates: int, params: int, dtype: str, contenders: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One configuration's row: the contenders, APPFL over fedhpc (>1: fedhpc is better), the agreement check."""
    update_gb = round(updates * params * ITEMSIZE[dtype] / 1e9, 3)
    row: dict[str, Any] = {"updates": updates, "params": params, "dtype": dtype, "update_gb": update_gb,
                           "contenders": contenders}  # fmt: skip
    ours, theirs = contenders.get("fedhpc", {}), contenders.get("appfl", {})
    if "seconds" in ours and "seconds" in theirs:
        row["appfl_over_fedhpc"] = {
            "seconds": round(theirs["seconds"] / ours["seconds"], 2),
            "peak_rss": round(theirs["peak_rss_gb"] / ours["peak_rss_gb"], 2),
        }
    norms = [c["check_l2"] for c in contenders.values() if "check_l2" in c]
    row["check_ok"] = bool(norms) and max(norms) - min(norms) <= 0.01 * max(norms)
    return row


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A contender's interleaved runs: the fastest one, with the median time and the highest peak."""
    timed = [run for run in runs if "seconds" in run]
    if not timed:
        return runs[0]
    best = dict(min(timed, key=lambda run: run["seconds"]))
    best["median_seconds"] = round(statistics.median(run["seconds"] for run in timed), 3)
    best["peak_rss_gb"] = max(run["peak_rss_gb"] for run in timed)
    return best


def over_numpy(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """fedhpc's (and fedhpc-reduce's) seconds over numpy's from the same round: min and median of the ratios."""
    ratios: dict[str, dict[str, float]] = {}
    for name in ("fedhpc", "fedhpc-reduce"):
        pairs = [ours["seconds"] / floor["seconds"] for ours, floor in zip(runs.get(name, []), runs.get("numpy", []))
                 if "seconds" in ours and "seconds" in floor]  # fmt: skip
        if pairs:
            ratios[name] = {"min": round(min(pairs), 2), "median": round(statistics.median(pairs), 2)}
    return ratios


def sweep(args: argparse.Namespace, params: float, dtype: str) -> list[dict[str, Any]]:
    """All K for one (P, dtype), on one generated set of max(K) updates (the first K are used for each K)."""
    root = Path(tempfile.mkdtemp(prefix="fedhpc-bench-compare-", dir=args.tmp))
    try:
        need = max(args.updates) * params * ITEMSIZE[dtype] * 2 + params * (8 + ITEMSIZE[dtype])
        if shutil.disk_usage(root).free < need * 1.05:
            sys.exit(f"error: {root} has too little space for {need / 1e9:.1f} GB of inputs (use --tmp)")
        generate(root, max(args.updates), params, dtype)
        exact = parameter_count(root)
        rows = []
        for updates in sorted(args.updates):
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.contenders}
            for _ in range(args.repeat):
                for name in args.contenders:
                    runs[name].append(measure(name, root, updates, exact, dtype, 1))
            contenders = {name: combine(results) for name, results in runs.items()}
            rows.append(summarize(updates, exact, dtype, contenders) | {"over_numpy": over_numpy(runs)})
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, nargs="+", default=[2, 4, 8], help="numbers of updates K")
    parser.add_argument("--params", type=float, nargs="+", default=[50e6], help="parameters per update P")
    parser.add_argument("--dtype", nargs="+", choices=sorted(ITEMSIZE), default=["bfloat16"])
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the fastest counts")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the inputs (default: $TMPDIR)")
    args = parser.parse_args()
    if min(args.updates) < 1 or min(args.params) < 1 or args.repeat < 1:
        parser.error("--updates, --params and --repeat must be positive")
    load_before = os.getloadavg()[0]
    rows = [row for dtype in args.dtype for params in args.params for row in sweep(args, params, dtype)]
    print(json.dumps({"bench": "aggregate_compare", "repeat": args.repeat, "results": rows,
                      "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}))  # fmt: skip


if __name__ == "__main__":
    main()
