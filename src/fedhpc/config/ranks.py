"""What a launcher's job occupies and how it starts its ranks: the parts launchers share.

`Resources` is what the memory plan reads off any launcher. `MpiConfig` and
`RankedLauncherConfig` serve the launchers that place nodes × ranks_per_node
ranks in an allocation (Parsl's batch jobs, Globus Compute tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedhpc.config.types import BackendConfig, Frozen, KeyedErrors

Device = Literal["auto", "cpu", "cuda", "rocm", "xpu"]
"""auto: the node's accelerator if it has one per rank, else the CPU; rocm: an AMD GPU (a HIP build, which torch calls cuda)."""


@dataclass(frozen=True)
class Resources:
    """One job of a launcher: its nodes, the ranks it starts on each, and the device they train on."""

    nodes: int
    ranks_per_node: int
    device: Device

    @property
    def ranks(self) -> int:
        """Ranks per job."""
        return self.nodes * self.ranks_per_node


class MpiConfig(Frozen):
    """How a `parsl` job starts its ranks in the allocation: the line `facility/launchers/ranks.py` writes.

    ``launcher``: ``mpiexec`` (with ``flavour`` mpich: Hydra ``-n T -ppn R``; pals: Cray PALS on HPE PBS
    systems such as Polaris and Aurora, ``-n T --ppn R``; openmpi: ``-n T --map-by ppr:R:node -x VAR``),
    ``srun`` (Slurm job step), ``aprun`` (Cray ALPS), ``torchrun`` (one ``torch.distributed.run`` per node;
    across nodes started by srun under Slurm, by mpiexec elsewhere) or ``none`` (the worker as is, one process).
    """

    launcher: Literal["mpiexec", "srun", "aprun", "torchrun", "none"] = "none"
    flavour: Literal["mpich", "pals", "openmpi"] | None = Field(
        None, description="mpiexec's command-line dialect; default mpich"
    )
    extra_args: list[str] = Field(
        default_factory=list, description="added to the launcher's line before the program, e.g. [--cpu-bind, depth]"
    )


def rank_launcher_errors(mpi: MpiConfig, ranks: int) -> KeyedErrors:
    """What is wrong with `mpi` for a job of `ranks` ranks, whoever runs the job (parsl, globus-compute shell)."""
    errors: KeyedErrors = []
    if mpi.launcher == "none" and ranks != 1:
        errors.append((("mpi", "launcher"), f"none starts one process, but nodes × ranks_per_node is {ranks}; "
                       "choose mpiexec, srun, aprun or torchrun", mpi.launcher))
    if mpi.flavour is not None and mpi.launcher not in ("mpiexec", "torchrun"):
        errors.append((("mpi", "flavour"), f"only applies to mpi.launcher mpiexec (or torchrun, which starts "
                       f"one per node with mpiexec outside Slurm), not {mpi.launcher}", mpi.flavour))
    if mpi.extra_args and mpi.launcher == "none":
        errors.append((("mpi", "extra_args"), "mpi.launcher none has no launcher to pass them to", mpi.extra_args))
    return errors


class RankedLauncherConfig(BackendConfig):
    """A launcher whose job starts ``nodes`` × ``ranks_per_node`` ranks.

    Each subclass declares those fields (and ``device``) itself, where they sit
    in its keys: the order of keys is the order of its errors and of the
    experiment the run directory records.
    """

    if TYPE_CHECKING:
        nodes: int
        ranks_per_node: int
        device: Device

    @property
    def nprocs(self) -> int:
        """Ranks per job."""
        return self.nodes * self.ranks_per_node

    def resources(self) -> Resources:
        """The allocation's nodes, each running ranks_per_node ranks."""
        return Resources(self.nodes, self.ranks_per_node, self.device)
