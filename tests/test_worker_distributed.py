"""Rank environment from each launcher family, device choice, and process-group preconditions."""

from __future__ import annotations

import pytest
import torch

from fedhpc.errors import ConfigError
from fedhpc.worker.distributed import RankEnv, init_process_group, rank_env, ranks_on_this_node, resolve_device


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


def test_device_choice() -> None:
    assert resolve_device("cpu", RankEnv()) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", RankEnv()) == torch.device("cpu")
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda", RankEnv())


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"LOCAL_WORLD_SIZE": "4"}, 4), ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 2), ({"PALS_LOCAL_SIZE": "8"}, 8),
     ({"MPI_LOCALNRANKS": "3"}, 3), ({"SLURM_NTASKS_PER_NODE": "2"}, 2), ({}, None), ({"LOCAL_WORLD_SIZE": "x"}, None)],
)  # fmt: skip
def test_ranks_on_this_node_from_each_launcher(environ: dict[str, str], expected: int | None) -> None:
    assert ranks_on_this_node(environ) == expected


def test_more_ranks_than_gpus_trains_on_the_cpu_or_says_what_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL refuses two ranks on one GPU: the quickstart's 2-rank facility on a 1-GPU workstation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    two_on_one = {"LOCAL_WORLD_SIZE": "2"}
    assert resolve_device("auto", RankEnv(1, 2, 1), two_on_one) == torch.device("cpu")
    assert resolve_device("auto", RankEnv(0, 2, 0), two_on_one) == torch.device("cpu")
    with pytest.raises(ConfigError, match="2 ranks on this node but 1 GPU.*nprocs"):
        resolve_device("cuda", RankEnv(0, 2, 0), two_on_one)


def test_process_group_needs_a_rendezvous_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT are not set"):
        init_process_group(RankEnv(0, 2, 0), torch.device("cpu"))
    init_process_group(RankEnv(), torch.device("cpu"))  # one rank: nothing to join
