"""The rank launch line of a job, per launcher and flavour: exact strings, the binding keys and their errors,
plus the aprun shim run for real."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import json
import time

import pytest

from conftest import QUICKSTART
from fedhpc.config import MpiConfig, load_experiment
from fedhpc.errors import ConfigError
from fedhpc.facility.launchers.ranks import Layout, rank_command
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

ARGV = ["/venv/bin/python", "-m", "fedhpc", "worker", "--task", "/staging/tasks/r0001 a0/task.json"]
PROGRAM = "/venv/bin/python -m fedhpc worker --task '/staging/tasks/r0001 a0/task.json'"
TORCHRUN = "/venv/bin/python -m torch.distributed.run --nproc-per-node 4"
RDZV = '--nnodes 2 --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"'


@pytest.mark.parametrize(
    ("layout", "mpi", "options", "expected"),
    [
        (Layout(1, 1), {}, {}, PROGRAM),
        (Layout(1, 2), {"launcher": "mpiexec"}, {}, f"mpiexec -n 2 -ppn 2 {PROGRAM}"),
        (Layout(2, 4), {"launcher": "mpiexec", "flavour": "mpich"}, {}, f"mpiexec -n 8 -ppn 4 {PROGRAM}"),
        (
            Layout(2, 4),
            {"launcher": "mpiexec", "flavour": "pals", "extra_args": ["--depth", "8", "--cpu-bind", "depth"]},
            {},
            f"mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth {PROGRAM}",
        ),
        (
            Layout(2, 4),
            {"launcher": "mpiexec", "flavour": "pals", "cpu_bind": "list:24-31:16-23:8-15:0-7"},
            {},
            f"mpiexec -n 8 --ppn 4 --cpu-bind list:24-31:16-23:8-15:0-7 {PROGRAM}",
        ),
        (
            Layout(1, 12),
            {"launcher": "mpiexec", "flavour": "pals", "cpus_per_rank": 8, "cpu_bind": "depth",
             "gpu_bind": "list:0.0:0.1:1.0:1.1:2.0:2.1:3.0:3.1:4.0:4.1:5.0:5.1", "extra_args": ["--no-vni"]},
            {},
            "mpiexec -n 12 --ppn 12 --depth 8 --cpu-bind depth --gpu-bind list:0.0:0.1:1.0:1.1:2.0:2.1:3.0:3.1:4.0:4.1"
            f":5.0:5.1 --no-vni {PROGRAM}",
        ),
        (
            Layout(2, 4),
            {"launcher": "mpiexec", "flavour": "openmpi", "extra_args": ["--allow-run-as-root"]},
            {"exported": ["FEDHPC_DEVICE", "MASTER_PORT", "HF_HOME"]},
            "mpiexec -n 8 --map-by ppr:4:node -x MASTER_ADDR -x MASTER_PORT -x FEDHPC_DEVICE -x HF_HOME "
            f"--allow-run-as-root {PROGRAM}",
        ),
        (
            Layout(2, 4, gpus_per_rank=1),
            {"launcher": "srun"},
            {},
            f"srun --nodes 2 --ntasks 8 --ntasks-per-node 4 --gpus-per-task 1 --kill-on-bad-exit=1 {PROGRAM}",
        ),
        (
            Layout(1, 2),
            {"launcher": "srun"},
            {},
            f"srun --nodes 1 --ntasks 2 --ntasks-per-node 2 --kill-on-bad-exit=1 {PROGRAM}",
        ),
        (
            Layout(2, 4, gpus_per_rank=1),
            {"launcher": "srun", "cpus_per_rank": 32, "cpu_bind": "cores", "gpu_bind": "none"},
            {},
            "srun --nodes 2 --ntasks 8 --ntasks-per-node 4 --cpus-per-task 32 --gpus-per-task 1 --cpu-bind=cores "
            f"--gpu-bind=none --kill-on-bad-exit=1 {PROGRAM}",
        ),
        (
            Layout(1, 8, gpus_per_rank=1),
            {"launcher": "srun", "cpus_per_rank": 7, "gpu_bind": "closest", "extra_args": ["--threads-per-core=1"]},
            {},
            "srun --nodes 1 --ntasks 8 --ntasks-per-node 8 --cpus-per-task 7 --gpus-per-task 1 --gpu-bind=closest "
            f"--kill-on-bad-exit=1 --threads-per-core=1 {PROGRAM}",
        ),
        (
            Layout(2, 4),
            {"launcher": "aprun", "cpus_per_rank": 8, "cpu_bind": "depth"},
            {},
            "aprun -n 8 -N 4 -d 8 -cc depth bash -c "
            + shlex.quote('export RANK="$ALPS_APP_PE" WORLD_SIZE=8 LOCAL_RANK="$((ALPS_APP_PE % 4))"; exec "$@"')
            + f" fedhpc-rank {PROGRAM}",
        ),
        (
            Layout(1, 4),
            {"launcher": "torchrun"},
            {},
            f'{TORCHRUN} --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --no-python {PROGRAM}',
        ),
        (
            Layout(2, 4, gpus_per_rank=1),
            {"launcher": "torchrun"},
            {"per_node": "srun"},
            "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --gpus-per-task 4 --kill-on-bad-exit=1 "
            f"{TORCHRUN} {RDZV} --no-python {PROGRAM}",
        ),
        (
            Layout(2, 4),
            {"launcher": "torchrun", "flavour": "pals", "extra_args": ["--max-restarts", "0"]},
            {},
            f"mpiexec -n 2 --ppn 1 {TORCHRUN} {RDZV} --max-restarts 0 --no-python {PROGRAM}",
        ),
        (
            Layout(2, 1),
            {"launcher": "torchrun", "flavour": "openmpi"},
            {"exported": ["FEDHPC_DEVICE"]},
            "mpiexec -n 2 --map-by ppr:1:node -x MASTER_ADDR -x MASTER_PORT -x FEDHPC_DEVICE "
            "/venv/bin/python -m torch.distributed.run --nproc-per-node 1 "
            f"{RDZV} --no-python {PROGRAM}",
        ),
    ],
    ids=lambda value: None,
)
def test_rank_command_per_launcher_and_flavour(layout, mpi, options, expected):
    assert rank_command(layout, MpiConfig(**mpi), ARGV, **options) == expected


def test_the_aprun_shim_gives_the_worker_rank_world_size_and_local_rank():
    """ALPS exports only ALPS_APP_PE; run the shim part of the line as aprun would on PE 5."""
    probe = [sys.executable, "-c", "import os; e = os.environ; print(e['RANK'], e['WORLD_SIZE'], e['LOCAL_RANK'])"]
    line = rank_command(Layout(2, 4), MpiConfig(launcher="aprun"), probe)
    shim = line.removeprefix("aprun -n 8 -N 4 ")
    out = subprocess.run(["bash", "-c", shim], env={**os.environ, "ALPS_APP_PE": "5"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "8", "1"]


# ---- the binding keys: which launcher takes which, and what form --------------------------------

ENDPOINT = "2f9b6c1e-8d4a-4f3b-9a7e-5c0d1e2f3a4b"
PBS = {"kind": "parsl", "provider": "pbspro", "nodes": 2, "ranks_per_node": 4}
SLURM = {"kind": "parsl", "provider": "slurm", "nodes": 2, "ranks_per_node": 4, "gpus_per_rank": 1}
SHELL = {"kind": "globus-compute", "endpoint_id": ENDPOINT, "function": "shell", "nodes": 2, "ranks_per_node": 4}
PALS = {"launcher": "mpiexec", "flavour": "pals"}


def _load(launcher: dict):
    """The quickstart with `launcher` for beta; a globus-compute one runs where the data is a path at the facility."""
    remote = ["facilities.1.data=/scratch/beta.jsonl", 'facilities.1.mover={"staging_dir": "/scratch/staging"}']
    overrides = [f"facilities.1.launcher={json.dumps(launcher)}", *remote * (launcher["kind"] == "globus-compute")]
    return load_experiment(QUICKSTART, overrides)


def _error(launcher: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(launcher)
    return info.value


@pytest.mark.parametrize(
    ("launcher", "key", "fragment"),
    [
        ({**PBS, "mpi": {"launcher": "mpiexec", "cpu_bind": "depth"}}, "mpi.cpu_bind",
         "only mpiexec with flavour pals, srun or aprun take it, not mpi.launcher mpiexec (flavour mpich: pass its "
         "own options through mpi.extra_args)"),
        ({**PBS, "mpi": {"launcher": "mpiexec", "flavour": "openmpi", "cpus_per_rank": 8}}, "mpi.cpus_per_rank",
         "flavour openmpi"),
        ({**PBS, "mpi": {"launcher": "aprun", "gpu_bind": "list:0.0"}}, "mpi.gpu_bind",
         "only mpiexec with flavour pals or srun take it, not mpi.launcher aprun"),
        ({**SLURM, "mpi": {"launcher": "torchrun", "cpu_bind": "cores"}}, "mpi.cpu_bind",
         "torchrun's one agent per node starts the ranks itself"),
        ({**PBS, "mpi": {**PALS, "cpu_bind": "cores"}}, "mpi.cpu_bind",
         "is not a binding pals takes; use none, core, thread, socket, numa, depth, list:<cpus>:<cpus>..."),
        ({**PBS, "mpi": {**PALS, "cpu_bind": "list 1-8"}}, "mpi.cpu_bind", "is not a binding pals takes"),
        ({**PBS, "mpi": {**PALS, "gpu_bind": "closest"}}, "mpi.gpu_bind",
         "is not a binding pals takes; use list:<gpu>[.<tile>]:..."),
        ({**SLURM, "mpi": {"launcher": "srun", "cpu_bind": "depth"}}, "mpi.cpu_bind",
         "is not a binding srun takes; use none, rank, cores"),
        ({**SLURM, "mpi": {"launcher": "srun", "gpu_bind": "list:0.0"}}, "mpi.gpu_bind",
         "is not a binding srun takes; use closest, none, map_gpu:<list>"),
        ({**SLURM, "mpi": {"launcher": "srun", "cpus_per_rank": 0}}, "mpi.cpus_per_rank", "greater than 0"),
        ({**PBS, "mpi": {"launcher": "aprun", "cpu_bind": "cores"}}, "mpi.cpu_bind",
         "is not a binding aprun takes; use cpu, depth, numa_node, none or a CPU list"),
        ({**PBS, "ranks_per_node": 1, "nodes": 1, "mpi": {"cpus_per_rank": 8}}, "mpi.cpus_per_rank",
         "only mpiexec with flavour pals, srun or aprun take it, not mpi.launcher none; remove it"),
        ({**SLURM, "gpus_per_rank": 0, "mpi": {"launcher": "srun", "gpu_bind": "closest"}}, "mpi.gpu_bind",
         "srun binds only the GPUs its step holds, and this job asks for none; set the launcher's gpus_per_rank"),
        ({**PBS, "device": "cpu", "mpi": {**PALS, "gpu_bind": "list:0:1:2:3"}}, "mpi.gpu_bind",
         "binds GPUs but device is cpu"),
        ({**SHELL, "gpus_per_rank": 1, "mpi": PALS}, "gpus_per_rank",
         "only srun takes GPUs per rank, not mpi.launcher mpiexec"),
        ({**SHELL, "mpi": {"launcher": "srun", "gpu_bind": "closest"}}, "mpi.gpu_bind",
         "srun binds only the GPUs its step holds"),
        ({**SHELL, "gpus_per_rank": 1, "device": "cpu", "mpi": {"launcher": "srun"}}, "gpus_per_rank",
         "requests GPUs but device is cpu; set device to auto, cuda, rocm or xpu"),
        ({**SHELL, "function": "mpi", "mpi": {"cpu_bind": "depth"}}, "mpi.cpu_bind",
         "function mpi starts the ranks with the endpoint's own mpi_launcher (GlobusMPIEngine); remove it (its "
         "options go through mpi.extra_args, as launcher_options)"),
        ({**SHELL, "function": "mpi", "gpus_per_rank": 1}, "gpus_per_rank", "function mpi starts the ranks"),
    ],
    ids=lambda value: None,
)
def test_a_binding_key_its_launcher_cannot_use_is_an_error_at_that_key(launcher, key, fragment):
    error = _error(launcher)
    assert error.key == f"facilities.1.launcher.{key}"
    assert fragment in str(error)


def test_every_binding_mistake_is_reported_at_once():
    message = str(_error({**PBS, "mpi": {"launcher": "mpiexec", "cpus_per_rank": 4, "gpu_bind": "none"}}))
    assert "facilities.1.launcher.mpi.cpus_per_rank: only mpiexec with flavour pals" in message
    assert "facilities.1.launcher.mpi.gpu_bind: only mpiexec with flavour pals or srun" in message


@pytest.mark.parametrize(
    ("launcher", "line"),
    [
        ({**PBS, "mpi": {**PALS, "cpus_per_rank": 8, "cpu_bind": "depth"}},
         "mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth"),
        ({**SLURM, "mpi": {"launcher": "srun", "cpus_per_rank": 7, "gpu_bind": "map_gpu:4,5,2,3,6,7,0,1"}},
         "srun --nodes 2 --ntasks 8 --ntasks-per-node 4 --cpus-per-task 7 --gpus-per-task 1 "
         "--gpu-bind=map_gpu:4,5,2,3,6,7,0,1 --kill-on-bad-exit=1"),
        ({**SHELL, "gpus_per_rank": 1, "mpi": {"launcher": "srun", "cpu_bind": "verbose,cores", "gpu_bind": "closest"}},
         "srun --nodes 2 --ntasks 8 --ntasks-per-node 4 --gpus-per-task 1 --cpu-bind=verbose,cores "
         "--gpu-bind=closest --kill-on-bad-exit=1"),
    ],
    ids=["pals-depth", "srun-map-gpu", "globus-shell-srun"],
)
def test_a_good_binding_loads_and_reaches_the_rank_line(launcher, line):
    """From the experiment file to the line: the launcher's own Layout (its gpus_per_rank) and its mpi block."""
    config = _load(launcher).facilities[1].launcher
    layout = Layout(config.nodes, config.ranks_per_node, config.gpus_per_rank)
    assert rank_command(layout, config.mpi, ARGV) == f"{line} {PROGRAM}"


@pytest.mark.slurm
def test_real_srun_starts_the_ranks_of_a_line_with_the_binding_keys(slurm_cluster, tmp_path):
    """srun parses the words fedhpc writes and gives each rank its CPUs. This cluster's task/none plugin applies no
    binding (srun says so, having read --cpu-bind=cores), so the count and the ranks are asserted, not the affinity."""
    probe = [sys.executable, "-c", "import os; e = os.environ; print(e['SLURM_PROCID'], e['SLURM_CPUS_PER_TASK'])"]
    mpi = MpiConfig(launcher="srun", cpus_per_rank=1, cpu_bind="cores")
    line = rank_command(Layout(1, 2), mpi, probe)
    assert line.startswith("srun --nodes 1 --ntasks 2 --ntasks-per-node 2 --cpus-per-task 1 --cpu-bind=cores ")
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --ntasks-per-node=2\n{line}\n")
    job = slurm_cluster.run("sbatch", "--parsable", f"--output={tmp_path}/out", str(script)).stdout.strip()
    deadline = time.monotonic() + 60
    while slurm_cluster.run("squeue", "-h", "-j", job, check=False).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still in the queue"
        time.sleep(0.2)
    output = (tmp_path / "out").read_text()
    assert sorted(output.splitlines()) == ["0 1", "1 1", "srun: cluster configuration lacks support for cpu binding"]
