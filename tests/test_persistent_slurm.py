"""Persistent workers on a real (one-node) Slurm cluster, through the Parsl Slurm provider.

One batch job per facility serves every round; when Slurm ends that job at its walltime
(or it is killed) the server submits another and the run finishes without losing a round.
Needs scripts/slurm-cluster.sh (root, Debian packages).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import FAULTS_DIR
from fedhpc.run.ledger import Ledger
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)
from test_facility_parsl_slurm import events, fedhpc_run, queue, slurm_facility
from test_persistent_e2e import assert_every_round_once, worker_events

pytestmark = pytest.mark.slurm


def persistent_facility(name: str, **launcher) -> dict:
    return {**slurm_facility(name, cores_per_node=1, **launcher), "mode": "persistent",
            "persistent": {"heartbeat_interval": 1, "heartbeat_timeout": 10}}  # fmt: skip


def test_quickstart_with_one_persistent_slurm_job_per_facility(slurm_cluster, tmp_path: Path) -> None:
    """beta alone, 2 ranks started by srun: the cluster's node has 2 CPUs, and a persistent job keeps its CPUs."""
    run_dir = tmp_path / "run"
    beta = persistent_facility("beta", ranks_per_node=2, mpi={"launcher": "srun"})
    beta["launcher"]["cores_per_node"] = 2
    server = fedhpc_run(slurm_cluster, run_dir, [beta], "algorithm.rounds=3")
    out, err = server.communicate(timeout=300)
    assert server.returncode == 0, out + err[-3000:]

    ledger = assert_every_round_once(run_dir, 3, {"beta"})
    story = [(name, detail) for name, detail in worker_events(ledger, "beta")]
    assert [name for name, _ in story] == ["worker_started", "worker_ready", "worker_stopped"], story
    assert story[1][1]["world_size"] == 2
    started = [e for e in events(run_dir) if e["event"] == "worker_started"]
    assert all(e["job_id"].startswith("slurm-") for e in started), started
    assert queue(slurm_cluster) == ""  # the server stopped its workers' jobs at the end


@pytest.mark.slow
def test_a_persistent_job_past_its_slurm_walltime_is_replaced_and_the_run_finishes(slurm_cluster, tmp_path) -> None:
    """alpha's first job hangs in round 2 until Slurm's one-minute walltime ends it; a second job finishes the run.

    Slow (about 90 s: Slurm counts whole minutes and checks limits every 30 s or so). The default run
    covers the same path in two faster parts: the local launcher's walltime replacing a persistent
    worker (test_persistent_e2e) and Slurm's time-limit banner read as "walltime exceeded" (test_facility_parsl).
    """
    run_dir = tmp_path / "run"
    hang = {"PYTHONPATH": str(FAULTS_DIR), "FEDHPC_TEST_FAULT": "slow", "FEDHPC_TEST_SLOW_SECONDS": "600",
            "FEDHPC_TEST_SLOW_ROUNDS": "2", "FEDHPC_TEST_SLOW_WORKERS": "w0001", "OMP_NUM_THREADS": "1"}
    alpha = persistent_facility("alpha", walltime="00:01:00", env=hang)
    alpha["persistent"]["heartbeat_timeout"] = 600  # only the walltime may end the hung worker
    server = fedhpc_run(slurm_cluster, run_dir, [alpha], "algorithm.rounds=3")
    out, err = server.communicate(timeout=400)
    assert server.returncode == 0, out + err[-3000:]

    ledger = assert_every_round_once(run_dir, 3, {"alpha"})
    story = worker_events(ledger, "alpha")
    assert [name for name, _ in story] == [
        "worker_started", "worker_ready", "worker_lost", "worker_started", "worker_ready", "worker_stopped"
    ], story
    assert "walltime exceeded (00:01:00)" in story[2][1]["reason"], story[2][1]
    assert [e.detail["state"] for e in ledger.events("job_finished")] == ["done"] * 3  # round 2 retried, not failed
    assert queue(slurm_cluster) == ""


def test_a_sigkilled_persistent_slurm_worker_is_replaced_within_the_heartbeat_timeout(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    server = fedhpc_run(slurm_cluster, run_dir, [persistent_facility("alpha")], "algorithm.rounds=3")
    try:
        deadline = time.monotonic() + 120
        while not any(e["event"] == "round_complete" and e.get("round") == 1 for e in events(run_dir)):
            assert time.monotonic() < deadline, "round 1 never completed"
            assert server.poll() is None, server.communicate()
            time.sleep(0.1)
        heartbeat = run_dir / "staging" / "alpha" / "workers" / "w0001" / "heartbeat.json"
        pid = json.loads(heartbeat.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        out, err = server.communicate(timeout=240)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, out + err[-3000:]

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2, 3]
    (lost,) = [e for e in ledger.events("worker_lost") if e.facility == "alpha"]
    assert lost.ts - killed_at < 10 + 5  # the heartbeat timeout, plus a poll or two
    assert [e.detail["worker"] for e in ledger.events("worker_started")] == ["w0001", "w0002"]
    assert queue(slurm_cluster) == ""
