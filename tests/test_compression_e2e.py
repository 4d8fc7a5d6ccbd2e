"""The quickstart with int8 updates and error feedback, end to end: real workers, real files, the real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedhpc.exchange import ExchangeDir
from conftest import QUICKSTART, run_fedhpc


@pytest.mark.slow  # tests/test_simulated_codecs_and_dp.py runs the same wiring in seconds
def test_quickstart_with_int8_and_error_feedback(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_fedhpc(
        "run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", "algorithm.rounds=2",
        "--set", "algorithm.local_steps=2", "--set", "exchange.update_form=delta",
        "--set", "exchange.compression.codec=int8",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for round in (1, 2):
        for facility in ("alpha", "beta"):
            update = run_dir / "updates" / f"r{round:04d}" / facility
            manifest = json.loads((update / "manifest.json").read_text())
            assert manifest["format_version"] == 4 and manifest["update_form"] == "delta"
            codecs = {entry["codec"]["name"] for entry in manifest["tensors"].values()}
            assert codecs == {"int8"}
            # 8 bits a value and an fp32 scale per 256: the tensor data is ~4x smaller than fp32
            stored = sum(p["shape"][0] * (1 if p["dtype"] == "int8" else 4) for e in manifest["tensors"].values()
                         for p in e["codec"]["stored"].values())
            values = sum(torch.Size(e["shape"]).numel() for e in manifest["tensors"].values())
            assert values * 4 / stored > 3.9
            # the residual stays at the facility: nothing of it is in what the server pulled
            assert sorted(p.name for p in update.iterdir()) == ["manifest.json", "model-00001-of-00001.safetensors"]
    for facility in ("alpha", "beta"):
        kept = run_dir / "staging" / facility / "error_feedback" / facility
        assert sorted(p.name for p in kept.iterdir()) == ["r0001.safetensors", "r0002.safetensors"]
    # the global of round 2 is the global of round 1 plus the samples-weighted mean of the decoded deltas
    g1, g2 = ExchangeDir(run_dir / "global" / "r0001"), ExchangeDir(run_dir / "global" / "r0002")
    updates = [ExchangeDir(run_dir / "updates" / "r0002" / f) for f in ("alpha", "beta")]
    weights = [u.manifest.num_samples for u in updates]
    for name in g1.names():
        mean = sum(w * u.get(name) for w, u in zip(weights, updates)) / sum(weights)
        assert torch.allclose(g2.get(name), g1.get(name) + mean, atol=1e-6), name
