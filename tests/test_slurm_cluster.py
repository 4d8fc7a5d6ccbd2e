"""The one-node Slurm test cluster (scripts/slurm-cluster.sh) runs, fails and cancels jobs.

The walltime case (`--time=0:01` killing a job) is left out: Slurm enforces limits only every
30 s or so, too slow for this suite.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slurm


def job_state(cluster, job_id: str) -> str:
    shown = cluster.run("scontrol", "show", "job", "-o", job_id, check=False)
    for field in shown.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return ""


def wait_for_state(cluster, job_id: str, wanted: set[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = job_state(cluster, job_id)
        if state in wanted:
            return state
        time.sleep(0.2)
    return state


def test_node_is_idle_in_default_partition(slurm_cluster):
    shown = slurm_cluster.run("sinfo", "-h", "-o", "%P %a %l %t")
    assert shown.stdout.split() == ["debug*", "up", "infinite", "idle"]


# First among the job tests: slurmctld makes its first scheduling pass ~3 s after it starts, and
# `sbatch --wait` polls after 2 s and then after 8 more, so a --wait job submitted first takes 10 s.
def test_scancel_cancels_running_job(slurm_cluster, tmp_path: Path):
    submitted = slurm_cluster.run("sbatch", "--parsable", f"--output={tmp_path}/job.out", "--wrap", "sleep 60")
    job_id = submitted.stdout.strip().split(";")[0]
    assert wait_for_state(slurm_cluster, job_id, {"RUNNING"}) == "RUNNING"
    slurm_cluster.run("scancel", job_id)
    assert wait_for_state(slurm_cluster, job_id, {"CANCELLED"}) == "CANCELLED"
    listed = slurm_cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T")
    assert listed.stdout.strip() == "CANCELLED"


def test_batch_job_writes_file(slurm_cluster, tmp_path: Path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho \"hello from $SLURM_JOB_ID\" > result.txt\n")
    done = slurm_cluster.run(
        "sbatch", "--wait", "--parsable", f"--chdir={tmp_path}", f"--output={tmp_path}/job.out", str(script),
    )
    job_id = done.stdout.strip().split(";")[0]
    assert (tmp_path / "result.txt").read_text() == f"hello from {job_id}\n"
    assert job_state(slurm_cluster, job_id) == "COMPLETED"


def test_failing_job_is_reported(slurm_cluster, tmp_path: Path):
    done = slurm_cluster.run(
        "sbatch", "--wait", "--parsable", f"--output={tmp_path}/job.out", "--wrap", "exit 3", check=False,
    )
    assert done.returncode != 0
    job_id = done.stdout.strip().split(";")[0]
    assert job_state(slurm_cluster, job_id) == "FAILED"
