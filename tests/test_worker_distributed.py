"""Rank environment from each launcher family, ranks per node, and the process group (a real 2-rank gloo job).

Device choice per device type is tests/test_worker_device.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedhpc.errors import ConfigError
from fedhpc.facility.launchers.local import pick_free_port
from fedhpc.worker.device import ranks_on_this_node
from fedhpc.worker.distributed import RankEnv, init_process_group, rank_env


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, RankEnv(0, 1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, RankEnv(3, 8, 1)),
        (
            {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
            RankEnv(2, 4, 0),
        ),
        ({"PMI_RANK": "5", "PMI_SIZE": "6", "PALS_LOCAL_RANKID": "1"}, RankEnv(5, 6, 1)),
        ({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"}, RankEnv(1, 2, 1)),
        ({"RANK": "1", "WORLD_SIZE": "2", "PMI_RANK": "0", "PMI_SIZE": "9"}, RankEnv(1, 2, 0)),  # torchrun wins
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, RankEnv(0, 1, 0)),  # a batch script is not a job step
        (  # an srun step: the step's task count, not the job's
            {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
             "SLURM_NTASKS": "4"},
            RankEnv(1, 2, 1),
        ),
        (  # Hydra under Slurm starts its proxies with srun: MPI's own variables win
            {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0"},
            RankEnv(3, 4, 1),
        ),
    ],
)
def test_rank_env_reads_each_launcher_family(environ: dict[str, str], expected: RankEnv) -> None:
    assert rank_env(environ) == expected


@pytest.mark.parametrize("environ", [{"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}])
def test_rank_env_rejects_nonsense(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        rank_env(environ)


def test_only_rank_zero_is_main() -> None:
    assert RankEnv(0, 2, 0).is_main and not RankEnv(1, 2, 1).is_main
    assert RankEnv(0, 2, 0).distributed and not RankEnv().distributed


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"LOCAL_WORLD_SIZE": "4"}, 4), ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 2), ({"PALS_LOCAL_SIZE": "8"}, 8),
     ({"MPI_LOCALNRANKS": "3"}, 3), ({"SLURM_NTASKS_PER_NODE": "2"}, 2), ({}, None), ({"LOCAL_WORLD_SIZE": "x"}, None)],
)  # fmt: skip
def test_ranks_on_this_node_from_each_launcher(environ: dict[str, str], expected: int | None) -> None:
    assert ranks_on_this_node(environ) == expected


def test_process_group_needs_a_rendezvous_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT are not set"):
        init_process_group(RankEnv(0, 2, 0), torch.device("cpu"))
    init_process_group(RankEnv(), torch.device("cpu"))  # one rank: nothing to join


RANK_SCRIPT = textwrap.dedent("""
    import json, logging, os
    import torch.distributed as dist
    from fedhpc.worker.device import resolve_device
    from fedhpc.worker.distributed import init_process_group, rank_env, all_reduce_sum
    logging.basicConfig(level=logging.INFO)
    env = rank_env()
    logging.getLogger("fedhpc").setLevel(logging.INFO if env.is_main else logging.ERROR)  # as the worker does
    device = resolve_device(os.environ["WANT"], env)
    init_process_group(env, device)
    total = all_reduce_sum([env.rank + 1.0], device)
    found = {"rank": env.rank, "device": str(device), "backend": dist.get_backend(), "sum": total[0]}
    with open(os.path.join(os.environ["OUT"], f"rank{env.rank}.json"), "w") as out:
        json.dump(found, out)
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("want", ["cpu", "auto"])
def test_two_ranks_join_a_gloo_group_on_the_cpu(tmp_path: Path, want: str) -> None:
    """Real torchrun, real gloo: the backend the device module chose, and each rank's device line."""
    if want == "auto" and torch.accelerator.is_available():
        pytest.skip("auto picks this machine's accelerator")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    environ = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "WANT": want, "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(pick_free_port()), str(script)],
        env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks == [{"rank": r, "device": "cpu", "backend": "gloo", "sum": 3.0} for r in (0, 1)]
    assert "rank 0: device cpu" in done.stderr and "rank 1: device cpu" in done.stderr
