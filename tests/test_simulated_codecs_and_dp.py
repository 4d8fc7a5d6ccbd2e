"""Compression and example-level DP through the real server with simulated facilities (seconds, not minutes).

The real-worker runs of the same paths (tests/test_compression_e2e.py, tests/test_dp_sgd_e2e.py) are slow
cases; these keep the wiring in the default run: the task carries the codec, the residual directory and
the DP settings, the worker in-process honours them, and the server decodes and records what comes back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from opacus.accountants import RDPAccountant

from fedhpc.exchange import ExchangeDir
from test_async_e2e import run, scenario


def _scenario(tmp_path: Path, extra: dict) -> Path:
    path = scenario(tmp_path, {"name": "fedavg", "rounds": 2, "min_facilities": 2}, {"f0": 1.0, "f1": 2.0})
    document = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**document, **extra}))
    return path


def test_int8_updates_with_error_feedback_through_the_server(tmp_path: Path) -> None:
    path = _scenario(tmp_path, {"exchange": {"update_form": "delta", "compression": {"codec": "int8"}}})
    run_dir = run(path)
    for round in (1, 2):
        for facility in ("f0", "f1"):
            manifest = json.loads((run_dir / "updates" / f"r{round:04d}" / facility / "manifest.json").read_text())
            assert manifest["format_version"] == 4
            assert {entry["codec"]["name"] for entry in manifest["tensors"].values()} == {"int8"}
    for facility in ("f0", "f1"):
        kept = run_dir / "staging" / facility / "error_feedback" / facility
        assert sorted(p.name for p in kept.iterdir()) == ["r0001.safetensors", "r0002.safetensors"]
    g1, g2 = ExchangeDir(run_dir / "global" / "r0001"), ExchangeDir(run_dir / "global" / "r0002")
    updates = [ExchangeDir(run_dir / "updates" / "r0002" / f) for f in ("f0", "f1")]
    weights = [u.manifest.num_samples for u in updates]
    for name in g1.names():
        mean = sum(w * u.get(name) for w, u in zip(weights, updates)) / sum(weights)
        assert torch.allclose(g2.get(name), g1.get(name) + mean, atol=1e-6), name


def test_example_privacy_through_the_server_reports_each_facilitys_epsilon(tmp_path: Path) -> None:
    sigma, batch, steps = 1.0, 2, 2
    path = _scenario(tmp_path, {"example_privacy": {"noise_multiplier": sigma, "max_grad_norm": 1.0}})
    document = yaml.safe_load(path.read_text())
    document["model"]["compile"] = False
    path.write_text(yaml.safe_dump(document))
    run_dir = run(path)
    examples = {"f0": 240, "f1": 160}  # the quickstart's alpha and beta files
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shown = {(e["round"], e["facility"]): e["example_epsilon"] for e in events if e["event"] == "accepted"}
    for (round, facility), epsilon in shown.items():
        accountant = RDPAccountant()
        for _ in range(steps * round):
            accountant.step(noise_multiplier=sigma, sample_rate=batch / examples[facility])
        assert epsilon == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    assert len(shown) == 4
    for facility in examples:
        kept = run_dir / "staging" / facility / "example_privacy" / facility / "accountant.json"
        assert json.loads(kept.read_text())["rounds"] == [1, 2]
        assert sorted(p.name for p in (run_dir / "updates" / "r0002" / facility).iterdir()) == [
            "manifest.json", "model-00001-of-00001.safetensors"]
