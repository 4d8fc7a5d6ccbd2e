"""Where this process sits in the job (rank, world size, local rank) and the process group.

The launcher decides the ranks; the worker only reads them from the environment.
Each launcher family names them differently, so they are read through one table
(first family whose rank variable is set wins) rather than special cases:

    torchrun / srun-wrapped torchrun   RANK, WORLD_SIZE, LOCAL_RANK
    Open MPI mpiexec                   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK
    MPICH / Cray PALS mpiexec          PMI_RANK, PMI_SIZE, PALS_LOCAL_RANKID or MPI_LOCALRANKID
    Slurm srun (a job step only)       SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID

Slurm's family comes last and counts only inside a job step (SLURM_STEP_ID
set): the batch script itself also has SLURM_PROCID=0 and SLURM_NTASKS, and
trusting them there would make a lone process wait forever for peers that never
start. An MPI launcher that starts its ranks through srun (Hydra, Open MPI
under Slurm) sets its own variables, which win. Cray ALPS (aprun) exports only
ALPS_APP_PE, no world size, so the parsl launcher's aprun line maps it onto
RANK/WORLD_SIZE/LOCAL_RANK itself. Under MPI the launcher must also export
MASTER_ADDR and MASTER_PORT (rank 0's host and a free port).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fedhpc.errors import ConfigError
from fedhpc.worker.device import backend_for, is_accelerator

logger = logging.getLogger(__name__)

RANK_VARIABLES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    # rank, world size, local rank (first one set), and a variable that must also be set (None: none)
    ("RANK", "WORLD_SIZE", ("LOCAL_RANK",), None),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", ("OMPI_COMM_WORLD_LOCAL_RANK",), None),
    ("PMI_RANK", "PMI_SIZE", ("PALS_LOCAL_RANKID", "MPI_LOCALRANKID"), None),
    ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", ("SLURM_LOCALID",), "SLURM_STEP_ID"),
)


@dataclass(frozen=True)
class RankEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes progress and publishes the update."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_env(environ: Mapping[str, str] = os.environ) -> RankEnv:
    """Read rank, world size and local rank; a plain `python` process is rank 0 of 1."""
    for rank_key, size_key, local_keys, also_set in RANK_VARIABLES:
        if rank_key in environ and (also_set is None or also_set in environ):
            local = next((environ[key] for key in local_keys if key in environ), "0")
            try:
                env = RankEnv(int(environ[rank_key]), int(environ.get(size_key, "1")), int(local))
            except ValueError as e:
                raise ConfigError(f"{rank_key}/{size_key}/{local_keys[0]} must be integers: {e}") from e
            if not 0 <= env.rank < env.world_size:
                raise ConfigError(f"{rank_key}={env.rank} is outside {size_key}={env.world_size}")
            return env
    return RankEnv()


def init_process_group(env: RankEnv, device: torch.device) -> None:
    """Join the job's process group on `device`'s backend (`fedhpc.worker.device.backend_for`); a no-op for one rank.

    An accelerator is also passed as `device_id`: the communicator is bound to
    this rank's device (and formed now rather than at the first collective), so
    a barrier never guesses the device as global rank mod device count, which is
    wrong on a node that runs fewer ranks than it has devices.
    """
    if not env.distributed or dist.is_initialized():
        return
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        unset = " and ".join(missing) + (" is" if len(missing) == 1 else " are")
        raise ConfigError(
            f"WORLD_SIZE is {env.world_size} but {unset} not set; "
            "start the worker under torchrun, or have the MPI launcher export rank 0's address and a free port"
        )
    backend = backend_for(device)
    dist.init_process_group(
        backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
        device_id=device if is_accelerator(device) else None,
    )


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum `values` element-wise over ranks (one collective for all of them)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def summed_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over ranks, left on its device: no wait for the host, unlike `all_reduce_sum`."""
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
