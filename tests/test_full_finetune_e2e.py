"""Full fine-tuning end to end: `fedhpc run` on the full-fine-tuning quickstart, per-round and persistent.

beta's two ranks shard the model with FSDP and write their rows of every update
themselves; updates travel as bf16 deltas; the server verifies, reconstructs and
averages them. A persistent worker that keeps its AdamW moments
(`model.keep_optimizer_state`) trains round 1 exactly as a fresh job does
(there is nothing to keep yet) and round 2 differently (it continues its moments).
"""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, processes_mentioning, run_fedhpc
from fedhpc.exchange import ExchangeDir
from fedhpc.run.ledger import Ledger

FULL_QUICKSTART = ROOT / "examples" / "quickstart" / "full-finetune.yaml"
FAST = ["--set", "algorithm.rounds=2", "--set", "algorithm.local_steps=3"]


def run(run_dir: Path, *extra: str) -> None:
    result = run_fedhpc("run", str(FULL_QUICKSTART), "--set", f"run_dir={run_dir}", *FAST, *extra)
    assert result.returncode == 0, result.stderr[-3000:]


def max_difference(a: Path, b: Path) -> float:
    first, second = ExchangeDir(a), ExchangeDir(b)
    assert first.names() == second.names()
    return max(float((first.get(name) - second.get(name)).abs().max()) for name in first.names())


def test_full_finetuning_quickstart_with_fsdp_deltas_and_kept_optimizer_state(tmp_path: Path) -> None:
    per_round, kept = tmp_path / "per-round", tmp_path / "persistent"
    run(per_round)
    persistent = [f"facilities.{i}.mode=persistent" for i in (0, 1)] + ["model.keep_optimizer_state=true"]
    run(kept, *[arg for setting in persistent for arg in ("--set", setting)])

    for run_dir in (per_round, kept):
        ledger = Ledger(run_dir / "ledger.sqlite")
        assert ledger.completed_rounds() == [0, 1, 2]
        for round in (1, 2):
            assert sorted(e.facility for e in ledger.events("accepted", round=round)) == ["alpha", "beta"]
    beta = ExchangeDir(per_round / "updates" / "r0002" / "beta")
    assert (beta.manifest.format_version, beta.manifest.update_form) == (3, "delta")
    assert len(beta.manifest.files) == 2  # one file per FSDP rank, nothing gathered
    assert {entry.dtype for entry in beta.manifest.tensors.values()} == {"bfloat16"}
    assert {entry.dtype for entry in ExchangeDir(per_round / "global" / "r0002").manifest.tensors.values()} == {
        "float32"
    }  # the server's master copy stays fp32
    assert max_difference(per_round / "global" / "r0000", per_round / "global" / "r0002") > 1e-4  # it trained

    assert max_difference(per_round / "global" / "r0001", kept / "global" / "r0001") < 1e-6
    assert max_difference(per_round / "global" / "r0002", kept / "global" / "r0002") > 1e-5
    assert processes_mentioning(str(kept)) == [], "a worker outlived the run"
