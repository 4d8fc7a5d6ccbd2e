"""The parsl launcher on a real (one-node) Slurm cluster: rank variables, sbatch errors, whole runs, scancel.

Needs scripts/slurm-cluster.sh (root, Debian packages); run with ``pytest -m slurm``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QUICKSTART, fedhpc_command
from fedhpc.config import ParslLauncherConfig
from fedhpc.errors import SubmitError
from fedhpc.exchange import ExchangeDir
from fedhpc.facility.base import JobSpec
from fedhpc.facility.launchers.parsl import ParslLauncher
from fedhpc.run.ledger import Ledger
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slurm
PY = sys.executable


def slurm_facility(name: str, **launcher) -> dict:
    return {
        "name": name,
        "data": str(QUICKSTART.parent / "data" / f"{name}.jsonl"),
        "launcher": {
            "kind": "parsl", "provider": "slurm", "exclusive": False, "master_addr": "127.0.0.1", "device": "cpu",
            "status_interval": 0.5, "env": {"OMP_NUM_THREADS": "1"}, **launcher,
        },
    }  # fmt: skip


def fedhpc_run(cluster, run_dir: Path, facilities: list[dict], *extra: str) -> subprocess.Popen:
    overrides = [f"run_dir={run_dir}", "algorithm.rounds=2", "algorithm.local_steps=2",
                 f"facilities={json.dumps(facilities)}", *extra]  # fmt: skip
    command = fedhpc_command("run", str(QUICKSTART), *[arg for o in overrides for arg in ("--set", o)])
    return subprocess.Popen(command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def queue(cluster) -> str:
    return cluster.run("squeue", "-h", "-o", "%i %t").stdout.strip()


def test_rank_variables_count_inside_an_srun_step_only(slurm_cluster, tmp_path):
    probe = f"{PY} -c 'from fedhpc.worker.distributed import rank_env; print(rank_env())'"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --ntasks-per-node=2\n{probe}\nsrun --ntasks 2 {probe}\n")
    job = slurm_cluster.run("sbatch", "--parsable", f"--output={tmp_path}/out", str(script)).stdout.strip()
    deadline = time.monotonic() + 60  # polled: `sbatch --wait` sleeps 10 s before its second look
    while slurm_cluster.run("squeue", "-h", "-j", job, check=False).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still in the queue"
        time.sleep(0.2)
    lines = (tmp_path / "out").read_text().splitlines()
    assert lines[0] == "RankEnv(rank=0, world_size=1, local_rank=0)"  # the batch script: SLURM_PROCID=0, no step
    assert sorted(lines[1:]) == [
        "RankEnv(rank=0, world_size=2, local_rank=0)",
        "RankEnv(rank=1, world_size=2, local_rank=1)",
    ]


def test_a_job_slurm_refuses_is_a_submit_error_with_sbatchs_message(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    launcher = ParslLauncher(ParslLauncherConfig(provider="slurm", partition="nosuch", exclusive=False))
    refused = "the slurm scheduler refused job 'alpha-r0001-a0': sbatch: error: .*partition"
    with pytest.raises(SubmitError, match=refused) as info:
        launcher.submit(JobSpec("alpha-r0001-a0", [PY, "-c", "pass"], tmp_path))
    assert info.value.returncode != 0 and "partition" in info.value.stderr


def test_a_queued_job_cancelled_by_scancel_says_so_though_it_left_no_stderr(slurm_cluster, tmp_path, monkeypatch):
    """squeue forgets the job and Parsl calls it COMPLETED; scontrol still knows it was CANCELLED."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    config = ParslLauncherConfig(provider="slurm", exclusive=False, status_interval=0.2,
                                 scheduler_options=["#SBATCH --begin=now+3600"])  # fmt: skip
    launcher = ParslLauncher(config)
    handle = launcher.submit(JobSpec("alpha-r0001-a0", [PY, "-c", "pass"], tmp_path, walltime_s=600))
    assert launcher.poll(handle).state.value == "queued"
    slurm_cluster.run("scancel", handle.job_id.removeprefix("slurm-"))
    deadline = time.monotonic() + 20
    while not (status := launcher.poll(handle)).state.finished:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (status.state.value, status.reason) == ("failed", "cancelled by the scheduler")
    assert handle.native.stderr is not None and not handle.native.stderr.exists()


def test_quickstart_runs_per_round_jobs_through_slurm_with_srun_ranks(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    facility = slurm_facility("alpha", cores_per_node=2, ranks_per_node=2, mpi={"launcher": "srun"})
    server = fedhpc_run(slurm_cluster, run_dir, [facility])
    out, err = server.communicate(timeout=240)
    assert server.returncode == 0, out + err

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    for number in (1, 2):
        assert [e.detail["state"] for e in ledger.events("job_finished", round=number)] == ["done"]
        assert ExchangeDir(run_dir / "updates" / f"r{number:04d}" / "alpha").manifest.metrics["world_size"] == 2
    submitted = [e for e in events(run_dir) if e["event"] == "submitted"]
    assert all(e["job_id"].startswith("slurm-") for e in submitted) and len(submitted) == 2
    waits = [e["queue_seconds"] for e in events(run_dir) if e["event"] == "job_running"]
    print(f"submit -> running per round (s): {[round(w, 2) for w in waits]}")
    assert len(waits) == 2 and all(w < 30 for w in waits)
    assert queue(slurm_cluster) == ""


def test_a_job_cancelled_with_scancel_fails_its_round_and_the_run_goes_on(slurm_cluster, tmp_path):
    """alpha's round-1 job is scancelled while it runs: beta carries round 1 (min_facilities 1), both train round 2."""
    run_dir = tmp_path / "run"
    facilities = [slurm_facility("alpha", cores_per_node=1), slurm_facility("beta", cores_per_node=1)]
    server = fedhpc_run(slurm_cluster, run_dir, facilities)
    try:
        deadline = time.monotonic() + 60
        job = None
        while job is None:
            assert time.monotonic() < deadline, "alpha's round-1 job never ran"
            assert server.poll() is None, server.communicate()
            submitted = [e for e in events(run_dir) if e["event"] == "submitted" and e["facility"] == "alpha"]
            slurm_id = submitted[0]["job_id"].removeprefix("slurm-") if submitted else None
            if slurm_id and f"{slurm_id} R" in queue(slurm_cluster).splitlines():
                job = slurm_id
            time.sleep(0.2)
        slurm_cluster.run("scancel", job)
        out, err = server.communicate(timeout=240)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 5, out + err  # ExitCode.COMPLETED_WITH_FAILURES: every round, one job failed
    assert "alpha round 1: failed: cancelled by the scheduler (scancel)" in out + err

    ledger = Ledger(run_dir / "ledger.sqlite")
    assert ledger.completed_rounds() == [0, 1, 2]
    (cancelled,) = [e for e in ledger.events("job_finished", round=1) if e.facility == "alpha"]
    assert cancelled.detail["state"] == "failed"
    assert cancelled.detail["reason"] == "cancelled by the scheduler (scancel)"
    assert {e.facility for e in ledger.events("accepted", round=1)} == {"beta"}
    assert {e.facility for e in ledger.events("accepted", round=2)} == {"alpha", "beta"}
    assert queue(slurm_cluster) == ""
