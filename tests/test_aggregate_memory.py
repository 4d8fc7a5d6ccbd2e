"""The server's memory does not grow with the number of facilities.

ARCHITECTURE.md promises that aggregation "never holds more than the global
model plus one tensor per update" — in fact the streaming reducer holds one
fp32 accumulator and one update tensor at a time. This test measures it: the
peak RSS increase while aggregating 8 updates must stay close to the increase
for 1 update.

Setup: a global (fp32) and 8 updates (bf16) of 8 Llama-shaped 4096×1024 blocks
(33.6M parameters; 64 MiB per update, 512 MiB for all 8) are written once.
Then, for K = 1 and K = 8, a fresh interpreter (so imports and the data
generation do not pollute its high-water mark) opens the directories, resets
or records its RSS, runs `write_exchange(dest, layout, FedAvg().aggregate(...))`
and reports VmHWM from /proc/self/status.

Why a non-streaming aggregator fails this (bound: K=8 ≤ 1.5 × K=1 + 32 MiB;
figures measured on this test's data when it was written):
- loading every update up front (`{name: get(name)}` per update) holds K × 64 MiB
  of bf16: 96 MiB at K=1, 560 MiB at K=8;
- reading through memory maps (`safe_open`) and keeping the handles open leaves
  every touched page resident in RSS: 84 MiB at K=1, 532 MiB at K=8;
- per tensor but all updates at once (`torch.stack([u.get(n).float() ...])`)
  holds K × (8 + 16) MiB per block: 49 MiB at K=1, 384 MiB at K=8.
The streaming reducer holds ≈ 16 (fp32 accumulator) + 8 (one bf16 update
tensor) + 16 (the fp32 cast of one chunk of it; here a chunk is a whole block)
= 40 MiB, whatever K is.

The subprocess runs with MALLOC_MMAP_THRESHOLD_=1 MiB so that glibc serves and
returns every tensor-sized buffer with mmap/munmap. With its default dynamic
threshold, freed buffers stay in a fragmented heap and VmHWM jumps by up to one
or two tensors (+32 MiB here) at random from run to run (address-space layout),
for K=1 as for K=8; that noise says nothing about what the code holds and would
make this test flaky. `bench/aggregate.py` reports the default allocator's figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedhpc.exchange import ExchangeDir, ExchangeMeta, TensorLayout, write_exchange

MiB = 1024 * 1024
SHAPE = (4096, 1024)  # a Llama-3-8B k_proj / v_proj (GQA, 8 KV heads of 128)
BLOCKS = 8
K_MAX = 8
FINGERPRINT = "sha256:" + "5" * 64

MEASURE = textwrap.dedent(
    """
    import json, re, sys
    from pathlib import Path

    import torch

    from fedhpc.aggregate import FedAvg, Update
    from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_exchange, write_state_dict

    def status(field):
        return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    root, k, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    global_ = ExchangeDir(root / "global")
    updates = []
    for i in range(k):
        directory = ExchangeDir(root / f"u{i}")
        updates.append(Update(f"f{i}", directory, directory.manifest.num_samples, directory.manifest.local_steps, 0))
    meta = ExchangeMeta(kind="global", round=1, base_fingerprint=global_.manifest.base_fingerprint)

    # Warm up every code path once on a tiny model (kernels, allocator, thread pool, writer).
    tiny = Path(out.parent / f"warmup-{k}")
    for name in ("g", "u"):
        write_state_dict(tiny / name, {"w": torch.ones(8, 8, dtype=torch.bfloat16)}, meta)
    tiny_global = ExchangeDir(tiny / "g")
    tiny_updates = [Update("w", ExchangeDir(tiny / "u"), 1, 1, 0)] * 2
    write_exchange(tiny / "out", tiny_global.layout(torch.float32), FedAvg().aggregate(tiny_global, tiny_updates, {}), meta)

    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    before = status("VmRSS")
    write_exchange(out, global_.layout(torch.float32), FedAvg("samples").aggregate(global_, updates, {}), meta)
    peak = status("VmHWM")
    print(json.dumps({"k": k, "rss_before": before, "peak": peak, "increase": peak - before, "hwm_reset": reset}))
    """
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aggregate_memory")
    layout = [TensorLayout(f"model.layers.{i}.self_attn.k_proj.weight", torch.float32, SHAPE) for i in range(BLOCKS)]

    def tensors(seed: int, dtype: torch.dtype):
        generator = torch.Generator().manual_seed(seed)
        for item in layout:  # one block in memory at a time
            yield item.name, torch.randn(SHAPE, generator=generator).to(dtype)

    write_exchange(root / "global", layout, tensors(0, torch.float32), ExchangeMeta(kind="global", round=0, base_fingerprint=FINGERPRINT))
    bf16_layout = [TensorLayout(item.name, torch.bfloat16, SHAPE) for item in layout]
    for i in range(K_MAX):
        meta = ExchangeMeta(
            kind="update", round=1, facility=f"f{i}", based_on_round=0, num_samples=10 + i, local_steps=4,
            base_fingerprint=FINGERPRINT,
        )
        write_exchange(root / f"u{i}", bf16_layout, tensors(i + 1, torch.bfloat16), meta)
    return root


def measure(root: Path, k: int) -> dict:
    out = root / f"out-{k}"
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(root), str(k), str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MiB)},  # see the module docstring
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_updates(model_dirs: Path):
    one = measure(model_dirs, 1)
    eight = measure(model_dirs, K_MAX)
    print(
        f"\npeak RSS increase during aggregation: K=1 {one['increase'] / MiB:.1f} MiB, "
        f"K={K_MAX} {eight['increase'] / MiB:.1f} MiB (update size {BLOCKS * 8} MiB each, "
        f"HWM reset: {eight['hwm_reset']})"
    )
    assert eight["increase"] <= 1.5 * one["increase"] + 32 * MiB, (one, eight)
    # Absolute: less than two updates' worth (loading all 8 would be 512 MiB).
    assert eight["increase"] < 2 * BLOCKS * 8 * MiB, eight

    # The work was really done: the output is the sample-weighted mean of the updates.
    result = ExchangeDir(model_dirs / f"out-{K_MAX}")
    name = result.names()[-1]
    updates = [ExchangeDir(model_dirs / f"u{i}") for i in range(K_MAX)]
    total = sum(u.manifest.num_samples for u in updates)
    expected = sum(u.get(name).to(torch.float32) * (u.manifest.num_samples / total) for u in updates)
    torch.testing.assert_close(result.get(name), expected, rtol=1e-5, atol=1e-5)
