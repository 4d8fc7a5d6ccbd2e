"""The rank launch line of a parsl job, per launcher and flavour: exact strings, plus the aprun shim run for real."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from fedhpc.config import MpiConfig
from fedhpc.facility.launchers.ranks import Layout, rank_command

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
            Layout(2, 4),
            {"launcher": "aprun", "extra_args": ["-d", "8"]},
            {},
            "aprun -n 8 -N 4 -d 8 bash -c "
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
