"""examples/secure-aggregation end to end: real workers, real jobs for keys and unmasking, the real server.

What a user checks: the run finishes, the ledger says each round was securely aggregated (and the keys
were asked for once), and nothing the server holds is an individual update in the clear: every update
it pulled is uint64 ring elements with a signed upload.json, while the keys and the plain update stayed
in the facility's own directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import run_fedhpc
from fedhpc.exchange import ExchangeDir
from fedhpc.run.ledger import Ledger

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "secure-aggregation" / "experiment.yaml"
QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "experiment.yaml"


def _run(experiment: Path, run_dir: Path, *extra: str) -> None:
    result = run_fedhpc("run", str(experiment), "--set", f"run_dir={run_dir}", "--set", "algorithm.rounds=2",
                        "--set", "algorithm.local_steps=2", *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _secure_run(tmp_path: Path) -> tuple[Path, Path]:
    run_dir, keys = tmp_path / "run", tmp_path / "facility-keys"
    _run(EXAMPLE, run_dir, "--set", f"secure_aggregation.keys_dirs.alpha={keys / 'alpha'}",
         "--set", f"secure_aggregation.keys_dirs.beta={keys / 'beta'}")
    return run_dir, keys


def test_the_secure_aggregation_example_never_shows_the_server_an_update(tmp_path: Path) -> None:
    run_dir, keys = _secure_run(tmp_path)
    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    pinned = ledger.events("secagg_keys_pinned")
    assert sorted((e.round, e.facility) for e in pinned) == [(1, "alpha"), (1, "beta")]  # asked once, then pinned
    for round in (1, 2):
        [unmasked] = ledger.events("secagg_unmasked", round=round)
        assert unmasked.detail["survivors"] == ["alpha", "beta"] and unmasked.detail["dropped"] == []
        [aggregated] = ledger.events("aggregated", round=round)
        assert aggregated.detail["facilities"] == ["secure-sum"] and "secure_aggregation" in aggregated.detail
    # nothing under the run directory is an exchange-format update; each pulled update is masked ring elements
    assert not [p for p in (run_dir / "updates").rglob("manifest.json")]
    global_names = set(ExchangeDir(run_dir / "global" / "r0001").names())
    for round in (1, 2):
        for facility in ("alpha", "beta"):
            update = run_dir / "updates" / f"r{round:04d}" / facility
            assert sorted(p.name for p in update.iterdir()) == ["masked.safetensors", "upload.json"]
            assert json.loads((update / "upload.json").read_text())["kind"] == "secagg-upload"
            with safe_open(str(update / "masked.safetensors"), framework="numpy") as handle:
                assert set(handle.keys()) == global_names
                assert {handle.get_slice(n).get_dtype() for n in handle.keys()} == {"U64"}
                words = np.concatenate([handle.get_tensor(n).reshape(-1) for n in handle.keys()])
            top_bytes = (words >> np.uint64(56)).astype(np.int64)  # a small encoded delta's top byte: 0x00 or 0xff
            assert len(np.unique(top_bytes)) > 200
    # the facility kept its keys private and its plain updates nowhere after masking
    for facility in ("alpha", "beta"):
        assert {p.stat().st_mode & 0o777 for p in (keys / facility).glob("*.*")} == {0o600}
        assert not list((keys / facility / "plain").iterdir())
    assert not list(run_dir.rglob("identity.ed25519"))
    g1, g2 = ExchangeDir(run_dir / "global" / "r0001"), ExchangeDir(run_dir / "global" / "r0002")
    assert all(torch.isfinite(g2.get(n)).all() for n in g2.names())
    assert any(not torch.equal(g1.get(n), g2.get(n)) for n in g1.names())


@pytest.mark.slow
def test_the_securely_aggregated_globals_match_a_plain_run_within_the_fixed_point_precision(tmp_path: Path) -> None:
    """The same run in the clear (weighting equal, the same seeds): every global agrees to ~1e-6."""
    secure_dir, _ = _secure_run(tmp_path / "secure")
    plain_dir = tmp_path / "plain" / "run"
    _run(QUICKSTART, plain_dir, "--set", "algorithm.weighting=equal")
    for round in (1, 2):
        secure, plain = (ExchangeDir(d / "global" / f"r{round:04d}") for d in (secure_dir, plain_dir))
        worst = max(float((secure.get(n) - plain.get(n)).abs().max()) for n in plain.names())
        assert worst < 1e-5, (round, worst)
