"""The four-machine example (examples/facilities/four-machines.yaml): Polaris, Aurora, Perlmutter, Frontier.

It validates offline; each facility's memory plan reads that machine's GPU memory (A100 40 GB, a Max 1550
tile's 64 GB, an MI250X GCD's 64 GB) and fits; and what each facility's job runs is pinned by a golden
file, ``tests/golden/job_scripts/<machine>.sh``: the bash that the Globus Compute ShellFunction runs at
the facility for round 1 (built by the launcher's own `worker_function`, formatted as the endpoint
formats it), with its ``module load`` lines, exports and rank line. The same blocks run from the
machine's own login node through Parsl's PBS Pro or Slurm provider (docs/hpc.md); those job scripts,
directives included, are pinned by ``<machine>.parsl.sh``, written by Parsl's real provider into a
stand-in ``qsub``/``sbatch`` that keeps the script (no scheduler here).

None of it ran on those machines: the golden files pin what fedhpc writes, not that the centres accept it.
After an intended change, regenerate them and review the diff:

    FEDHPC_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_four_machines.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from fedhpc.config import GlobusComputeLauncherConfig, ParslLauncherConfig, load_experiment
from fedhpc.facility.base import JobSpec
from fedhpc.facility.launchers.compute_command import worker_function
from fedhpc.facility.launchers.parsl import ParslLauncher
from fedhpc.memory_plan import facility_plan
from fedhpc.model_shape import model_shape

EXAMPLE = ROOT / "examples" / "facilities" / "four-machines.yaml"
GOLDEN = Path(__file__).parent / "golden" / "job_scripts"
REGENERATE = os.environ.get("FEDHPC_REGENERATE_GOLDEN") == "1"
GiB = 2**30

MACHINES = {  # name: (device, GPU memory per device, the rank line)
    "polaris": ("cuda", 40 * GiB, "mpiexec -n 8 --ppn 4 --cpu-bind list:24-31:16-23:8-15:0-7"),
    "aurora": ("xpu", 64 * GiB, "mpiexec -n 24 --ppn 12 --cpu-bind "
               "list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100"),
    "perlmutter": ("cuda", 40 * GiB, "srun --nodes 2 --ntasks 8 --ntasks-per-node 4 --cpus-per-task 32 "
                   "--gpus-per-task 1 --cpu-bind=cores --gpu-bind=none --kill-on-bad-exit=1"),
    "frontier": ("rocm", 64 * GiB, "srun --nodes 2 --ntasks 16 --ntasks-per-node 8 --cpus-per-task 7 "
                 "--gpus-per-task 1 --gpu-bind=closest --kill-on-bad-exit=1"),
}
ON_SITE = {  # what the parsl launcher adds when the server runs on the machine's own login node
    "polaris": {"provider": "pbspro", "scheduler_options": ["#PBS -l filesystems=home:eagle", "#PBS -l place=scatter"]},
    "aurora": {"provider": "pbspro", "scheduler_options": ["#PBS -l filesystems=home:flare", "#PBS -l place=scatter"]},
    "perlmutter": {"provider": "slurm"},
    "frontier": {"provider": "slurm"},
}
ROUND_1 = "tasks/r0001-a0/task.json"
SERVER_PYTHON = "/srv/fedhpc/venv/bin/python"  # the server's interpreter; the launcher puts the facility's first


@pytest.fixture(scope="module")
def experiment():
    return load_experiment(EXAMPLE)


def _matches_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGENERATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing; generate it with FEDHPC_REGENERATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file; if intended, regenerate and review"


def _job(experiment, name: str) -> JobSpec:
    """Round 1's job of facility `name`, as the server's launches.py builds it (its task under the staging dir)."""
    facility = experiment.facility(name)
    staging, _ = facility.mover.facility_staging()
    task = f"{staging}/{ROUND_1}"
    argv = [SERVER_PYTHON, "-m", "fedhpc", "worker", "--task", task]
    return JobSpec(f"{name}-r0001-a0", argv, Path("/srv/fedhpc/runs/logs/r0001"), walltime_s=3600.0, task=task)


def test_the_example_validates_offline():
    result = subprocess.run(
        [sys.executable, "-m", "fedhpc", "validate", str(EXAMPLE)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ok {EXAMPLE}: experiment 'chem-four-machines'")
    for name in MACHINES:
        assert f"facility {name}: globus-compute x" in result.stdout
    assert "does not fit" not in result.stdout


def test_one_experiment_with_a_facility_per_machine_on_its_own_device(experiment):
    assert [f.name for f in experiment.facilities] == list(MACHINES)
    for facility in experiment.facilities:
        launcher = facility.launcher
        assert isinstance(launcher, GlobusComputeLauncherConfig) and launcher.function == "shell"
        assert facility.remote and facility.data.is_absolute() and facility.mover.kind == "globus-transfer"
        assert launcher.device == MACHINES[facility.name][0]
    ranks = {f.name: (f.launcher.nodes, f.launcher.ranks_per_node) for f in experiment.facilities}
    assert ranks == {"polaris": (2, 4), "aurora": (2, 12), "perlmutter": (2, 4), "frontier": (2, 8)}


@pytest.mark.parametrize("name", MACHINES)
def test_each_memory_plan_reads_its_gpu_and_fits(experiment, name):
    """A100 40 GB on Polaris and Perlmutter, 64 GB per Max 1550 tile on Aurora and per MI250X GCD on Frontier."""
    facility = experiment.facility(name)
    plan = facility_plan(experiment, facility, model_shape(experiment.model))
    assert plan.inputs.gpu_memory == MACHINES[name][1]
    assert plan.inputs.ranks == facility.launcher.nprocs
    assert plan.fits, f"{name}: {plan.total / GiB:.1f} GiB of {plan.usable / GiB:.1f} usable"


def test_the_recipes_fill_each_gpu_the_same_way(experiment):
    """32 sequences per rank and optimizer step everywhere: two micro-batches of 16 on a 40 GB A100, one of 32
    where a device holds 64 GB. The plan of each uses its own micro-batch, and a 64 GB recipe would not fit an A100."""
    shape = model_shape(experiment.model)
    for facility in experiment.facilities:
        recipe = experiment.recipe_for(facility)
        assert recipe.batch_size * recipe.grad_accum_steps == 32
        assert recipe.batch_size == (16 if MACHINES[facility.name][1] == 40 * GiB else 32)
        plan = facility_plan(experiment, facility, shape)
        assert plan.inputs.micro_batch == recipe.batch_size and plan.fits
        on_an_a100 = facility_plan(experiment, facility, shape, gpu_memory=40 * GiB)
        assert on_an_a100.fits == (recipe.batch_size == 16), facility.name


@pytest.mark.parametrize("name", MACHINES)
def test_each_machine_runs_its_golden_job_script(experiment, name):
    """What the endpoint runs: worker_init (module loads), the exports, then the machine's rank line."""
    launcher = experiment.facility(name).launcher
    job = _job(experiment, name)
    script = worker_function(launcher, job, job.walltime_s).cmd.format()  # the endpoint formats it so
    _matches_golden(f"{name}.sh", script)
    lines = script.splitlines()
    assert lines[: len(launcher.worker_init.splitlines())] == launcher.worker_init.splitlines()
    assert f"export FEDHPC_DEVICE={MACHINES[name][0]}" in lines
    rank_line = f"timeout -k 30 3600 {MACHINES[name][2]} {launcher.python} -m fedhpc worker --task {job.task}"
    assert lines[-1] == f"{rank_line} </dev/null"


@pytest.mark.parametrize("name", MACHINES)
def test_the_same_block_from_the_machines_login_node_through_parsl(experiment, name, tmp_path, monkeypatch):
    """kind: parsl with the machine's provider takes the same nodes, ranks, mpi, worker_init, env and device
    (and the endpoint's account, queue, walltime); Parsl's own provider writes the directives around our script."""
    facility = experiment.facility(name)
    shared = facility.launcher.model_dump(
        include={"nodes", "ranks_per_node", "gpus_per_rank", "device", "mpi", "worker_init", "env"}
    )
    scheduler = {k: v for k, v in facility.launcher.user_endpoint_config.items() if k != "nodes_per_block"}
    config = ParslLauncherConfig(**{"kind": "parsl", **ON_SITE[name], **scheduler, **shared,
                                    "script_dir": str(tmp_path / "parsl")})  # fmt: skip
    script, arguments = _submitted_script(config, name, tmp_path, monkeypatch)
    _matches_golden(f"{name}.parsl.sh", script)
    assert f"{MACHINES[name][2]} {SERVER_PYTHON} -m fedhpc worker --task" in script
    if config.provider == "pbspro":  # PBSProProvider puts the queue and account on qsub's command line
        assert arguments.startswith(f"-q {scheduler['queue']} -A {scheduler['account']} ")


def _submitted_script(config: ParslLauncherConfig, name: str, tmp_path: Path, monkeypatch) -> tuple[str, str]:
    """The batch script Parsl's provider hands to qsub or sbatch, with this test's paths and times made stable,
    and the submit command's arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    submit = "qsub" if config.provider == "pbspro" else "sbatch"
    answers = {"qsub": "4242.aurora-pbs-0001", "sbatch": "Submitted batch job 4242", "sacct": "", "squeue": ""}
    for command, answer in answers.items():
        keep = f'echo "$*" > {tmp_path}/arguments; cp "${{@: -1}}" {tmp_path}/submitted.sh; ' * (command == submit)
        (bin_dir / command).write_text(f"#!/bin/bash\n{keep}echo '{answer}'\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = JobSpec(f"{name}-r0001-a0", [SERVER_PYTHON, "-m", "fedhpc", "worker", "--task", f"/staging/{ROUND_1}"],
                   tmp_path / "logs", walltime_s=3600.0)  # fmt: skip
    ParslLauncher(config).submit(spec)
    text = (tmp_path / "submitted.sh").read_text().replace(str(tmp_path), "/run")
    stable = re.sub(rf"{name}-r0001-a0\.\d+(\.\d+)?", f"{name}-r0001-a0.TIME", text)
    return stable, (tmp_path / "arguments").read_text()


def test_the_blocks_docs_hpc_explains_are_the_examples(experiment):
    """docs/hpc.md shows each machine's facility block line by line; it must be the example's (mover elided)."""
    text = (ROOT / "docs" / "hpc.md").read_text()
    example = {f["name"]: f for f in yaml.safe_load(EXAMPLE.read_text())["facilities"]}
    for name in MACHINES:
        section = text.split(f"\n### {name.capitalize()}\n", 1)[1]
        (shown,) = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
        assert {k: v for k, v in shown.items() if k != "mover"} == {
            k: v for k, v in example[name].items() if k != "mover"
        }, name
        assert shown["mover"]["kind"] == example[name]["mover"]["kind"]
