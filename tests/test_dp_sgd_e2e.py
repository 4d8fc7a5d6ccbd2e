"""The quickstart with example-level DP (DP-SGD in each worker), end to end: real workers, files and server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from conftest import QUICKSTART, run_fedhpc

SIGMA, BATCH, STEPS = 0.7, 16, 10
EXAMPLES = {"alpha": 240, "beta": 160}  # the quickstart's data files


def _epsilon(sample_rate: float, steps: int) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=SIGMA, sample_rate=sample_rate)
    return accountant.get_epsilon(delta=1e-5)


@pytest.mark.slow  # tests/test_simulated_codecs_and_dp.py runs the same wiring in seconds
def test_quickstart_with_example_privacy_learns_and_reports_each_facilitys_epsilon(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_fedhpc(
        "run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", "algorithm.rounds=2",
        "--set", f"algorithm.local_steps={STEPS}", "--set", f"algorithm.batch_size={BATCH}",
        "--set", "algorithm.lr=0.01", "--set", "model.compile=false", "--set", "facilities.1.launcher.nprocs=1",
        "--set", f"example_privacy.noise_multiplier={SIGMA}", "--set", "example_privacy.max_grad_norm=1.0",
        "--set", "example_privacy.release_loss=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    mean_loss = {}
    for round_ in (1, 2):
        losses = []
        for facility, count in EXAMPLES.items():
            update = run_dir / "updates" / f"r{round_:04d}" / facility
            metrics = json.loads((update / "manifest.json").read_text())["metrics"]
            # ε over every step this facility trained so far, as Opacus's accountant gives it for that schedule
            assert metrics["example_epsilon"] == pytest.approx(_epsilon(BATCH / count, STEPS * round_), rel=1e-9)
            losses += metrics["loss"]
            # the ledger stays at the facility: nothing of it is in what the server pulled
            assert sorted(p.name for p in update.iterdir()) == ["manifest.json", "model-00001-of-00001.safetensors"]
        mean_loss[round_] = sum(losses) / len(losses)
    for facility in EXAMPLES:
        kept = run_dir / "staging" / facility / "example_privacy" / facility / "accountant.json"
        ledger = json.loads(kept.read_text())
        assert ledger["rounds"] == [1, 2] and ledger["mechanism"] == "rdp"
    assert mean_loss[2] < mean_loss[1] - 0.1, mean_loss  # noised, and it still learns
    # the server records each accepted update's ε in metrics.jsonl (and the ledger)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shown = {(e["round"], e["facility"]): e["example_epsilon"] for e in events if e["event"] == "accepted"}
    assert shown[2, "beta"] == pytest.approx(_epsilon(BATCH / EXAMPLES["beta"], 2 * STEPS), rel=1e-9)
    assert len(shown) == 4
