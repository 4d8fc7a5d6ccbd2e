"""Compressed updates on real runs: bytes up per round per facility and the final global's loss, per codec.

    .venv/bin/python bench/compression_runs.py [--examples quickstart full-finetune]
        [--variants none int8-ef int8 nf4-ef topk-ef] [--keep DIR]

Runs `fedhpc run` on examples/quickstart/experiment.yaml (LoRA, fp32 weights sent by
default) and examples/quickstart/full-finetune.yaml (full fine-tuning, bf16 deltas by
default; `model.full.sharding=ddp` in every variant, baseline included, because
compressed updates are written whole by one rank and FSDP's are not), once per variant:

    none      the example as it is
    int8-ef   update_form delta, codec int8 (blocks of 256), error feedback
    int8      the same without error feedback
    nf4-ef    codec nf4 (blocks of 256), error feedback
    topk-ef   codec topk, fraction 0.01, error feedback

From each run directory: the bytes of every accepted update directory (its safetensors
files and manifest: what the mover pulls) per round and facility, the tensor data alone
in them (what the codec decides; on the tiny model headers and manifest are most of
an update), and the held-out
loss of the final global (`fedhpc.simulate.heldout`) on 200 examples of the
quickstart's two tasks drawn with another seed than the facilities' data. One JSON
line per run on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.compression_runs")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "quickstart": (ROOT / "examples" / "quickstart" / "experiment.yaml", []),
    "full-finetune": (ROOT / "examples" / "quickstart" / "full-finetune.yaml", ["model.full.sharding=ddp"]),
}
DELTA = ["exchange.update_form=delta"]
VARIANTS = {
    "none": [],
    "int8-ef": [*DELTA, "exchange.compression.codec=int8"],
    "int8": [*DELTA, "exchange.compression.codec=int8", "exchange.compression.error_feedback=false"],
    "nf4-ef": [*DELTA, "exchange.compression.codec=nf4"],
    "topk-ef": [*DELTA, "exchange.compression.codec=topk", "exchange.compression.fraction=0.01"],
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def heldout_file(directory: Path) -> Path:
    """The quickstart's two tasks (upper-casing, reversal), 100 words each, seed 1 (the facilities' data: seed 0)."""
    rng = random.Random(1)
    path = directory / "heldout.jsonl"
    with open(path, "w") as handle:
        for instruction, answer in (("Write this word in capital letters.", str.upper),
                                    ("Write this word backwards.", lambda w: w[::-1])):  # fmt: skip
            for _ in range(100):
                word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7)))
                handle.write(json.dumps({"instruction": instruction, "input": word, "output": answer(word)}) + "\n")
    return path


def update_bytes(run_dir: Path) -> dict[str, dict[str, int]]:
    """round → facility → bytes of the accepted update directory (data files + manifest)."""
    sizes: dict[str, dict[str, int]] = {}
    for round_dir in sorted((run_dir / "updates").iterdir()):
        for facility in sorted(p for p in round_dir.iterdir() if p.is_dir()):
            sizes.setdefault(round_dir.name, {})[facility.name] = sum(f.stat().st_size for f in facility.iterdir())
    return sizes


ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8}


def tensor_bytes(update_dir: Path) -> int:
    """The tensor data alone (no safetensors header, no manifest): what the codec decides."""
    manifest = json.loads((update_dir / "manifest.json").read_text())
    total = 0
    for entry in manifest["tensors"].values():
        stored = entry["codec"]["stored"].values() if "codec" in entry else [entry]
        for part in stored:
            count = 1
            for size in part["shape"]:
                count *= size
            total += count * ITEMSIZE[part["dtype"]]
    return total


def final_round(run_dir: Path) -> tuple[int, float | None]:
    last, mean_loss = 0, None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "round_complete":
            last, mean_loss = event["round"], event.get("mean_loss")
    return last, mean_loss


def run_one(example: str, variant: str, work: Path, heldout: Path) -> dict[str, object]:
    from fedhpc.config import load_experiment
    from fedhpc.simulate.heldout import HeldoutScorer

    path, base = EXAMPLES[example]
    run_dir = work / f"{example}-{variant}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"run_dir={run_dir}", *base, *VARIANTS[variant]]
    command = [sys.executable, "-m", "fedhpc", "run", str(path)]
    for item in overrides:
        command += ["--set", item]
    log.info("%s %s: %s", example, variant, " ".join(command[3:]))
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{example} {variant}: fedhpc run exited {done.returncode}\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    experiment = load_experiment(path, overrides)
    last, mean_train_loss = final_round(run_dir)
    scorer = HeldoutScorer(experiment.model, experiment.data, heldout)
    sizes = update_bytes(run_dir)
    per_update = [b for facilities in sizes.values() for b in facilities.values()]
    data = [tensor_bytes(p) for r in sorted((run_dir / "updates").iterdir()) for p in r.iterdir() if p.is_dir()]
    return {
        "bench": "compression_runs",
        "example": example,
        "variant": variant,
        "overrides": overrides[1:],
        "rounds": last,
        "bytes_per_update": {f: sorted({sizes[r][f] for r in sizes}) for f in sorted({f for r in sizes.values() for f in r})},
        "mean_bytes_per_update": sum(per_update) / len(per_update),
        "mean_tensor_bytes_per_update": sum(data) / len(data),
        "bytes_by_round": sizes,
        "final_heldout_loss": round(scorer.loss(run_dir / "global" / f"r{last:04d}"), 5),
        "initial_heldout_loss": round(scorer.loss(run_dir / "global" / "r0000"), 5),
        "last_round_mean_train_loss": mean_train_loss,
        "wall_s": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", nargs="+", choices=sorted(EXAMPLES), default=list(EXAMPLES))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--keep", type=Path, help="run directories here (default: a temporary directory, removed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedhpc-compression-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        heldout = heldout_file(work)
        for example in args.examples:
            for variant in args.variants:
                print(json.dumps(run_one(example, variant, work, heldout)), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
