"""What a launcher's job occupies and how it starts its ranks: the parts launchers share.

`Resources` is what the memory plan reads off any launcher. `MpiConfig` and
`RankedLauncherConfig` serve the launchers that place nodes × ranks_per_node
ranks in an allocation (Parsl's batch jobs, Globus Compute tasks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedhpc.config.types import BackendConfig, Frozen, KeyedErrors, PositiveInt, one_of

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
    """How a job starts its ranks in the allocation: the line `facility/launchers/ranks.py` writes.

    ``launcher``: ``mpiexec`` (with ``flavour`` mpich: Hydra ``-n T -ppn R``; pals: Cray PALS on HPE PBS
    systems such as Polaris and Aurora, ``-n T --ppn R``; openmpi: ``-n T --map-by ppr:R:node -x VAR``),
    ``srun`` (Slurm job step), ``aprun`` (Cray ALPS), ``torchrun`` (one ``torch.distributed.run`` per node;
    across nodes started by srun under Slurm, by mpiexec elsewhere) or ``none`` (the worker as is, one process).

    Where each rank's threads and GPU go is a key of its own, because the machines differ and a wrong
    binding costs throughput silently (`BINDING_LAUNCHERS` says which launcher takes which).
    """

    launcher: Literal["mpiexec", "srun", "aprun", "torchrun", "none"] = "none"
    flavour: Literal["mpich", "pals", "openmpi"] | None = Field(
        None, description="mpiexec's command-line dialect; default mpich"
    )
    cpus_per_rank: PositiveInt | None = Field(
        None, description="logical CPUs each rank owns: PALS --depth, srun --cpus-per-task, aprun -d"
    )
    cpu_bind: str | None = Field(
        None, description="PALS --cpu-bind (depth, core, list:1-8:9-16...), srun --cpu-bind= (cores, "
        "map_cpu:...), aprun -cc"
    )
    gpu_bind: str | None = Field(
        None, description="srun --gpu-bind= (closest, none, map_gpu:...), PALS --gpu-bind (list:0.0:0.1:...)"
    )
    extra_args: list[str] = Field(
        default_factory=list, description="added to the launcher's line before the program, e.g. [--mem-bind, local]"
    )

    @property
    def starter(self) -> str:
        """The launcher as the binding keys know it: pals, mpich or openmpi for mpiexec, else its name."""
        return (self.flavour or "mpich") if self.launcher == "mpiexec" else self.launcher


BINDING_LAUNCHERS: dict[str, tuple[str, ...]] = {
    "cpus_per_rank": ("pals", "srun", "aprun"),
    "cpu_bind": ("pals", "srun", "aprun"),
    "gpu_bind": ("pals", "srun"),
}
"""Which rank launchers (`MpiConfig.starter`) take each binding key."""
_BINDING_FORMS: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {
    ("cpu_bind", "pals"): (
        re.compile(r"none|core|thread|socket|numa|depth|(list|mask)(:[0-9A-Fa-fx,-]+)+"),
        "none, core, thread, socket, numa, depth, list:<cpus>:<cpus>... or mask:<hex>:...",
    ),
    ("cpu_bind", "srun"): (
        re.compile(r"((quiet|verbose),)?(none|rank|cores|threads|sockets|ldoms|boards|rank_ldom"
                   r"|(map_cpu|mask_cpu|map_ldom|mask_ldom):[0-9A-Fa-fx,*]+)"),
        "none, rank, cores, threads, sockets, ldoms, boards, rank_ldom, map_cpu:<list> or mask_cpu:<list>",
    ),
    ("cpu_bind", "aprun"): (
        re.compile(r"cpu|depth|numa_node|none|[0-9][0-9,:-]*"), "cpu, depth, numa_node, none or a CPU list (0-7:8-15)"
    ),
    ("gpu_bind", "pals"): (
        re.compile(r"list(:[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*)+"),
        "list:<gpu>[.<tile>]:... (one entry per local rank, e.g. list:0.0:0.1:1.0:1.1)",
    ),
    ("gpu_bind", "srun"): (
        re.compile(r"(verbose,)?(closest|none|(map_gpu|mask_gpu):[0-9A-Fa-fx,*]+|(single|per_task):[0-9]+)"),
        "closest, none, map_gpu:<list>, mask_gpu:<list>, single:<n> or per_task:<n>",
    ),
}


def rank_launcher_errors(mpi: MpiConfig, ranks: int, device: Device = "auto", gpus_per_rank: int = 0) -> KeyedErrors:
    """What is wrong with `mpi` for a job of `ranks` ranks on `device`, whoever runs the job (parsl, a shell task).

    `gpus_per_rank`: the GPUs the launcher asks srun for per rank; srun binds only GPUs its step holds.
    """
    errors: KeyedErrors = []
    if mpi.launcher == "none" and ranks != 1:
        errors.append((("mpi", "launcher"), f"none starts one process, but nodes × ranks_per_node is {ranks}; "
                       "choose mpiexec, srun, aprun or torchrun", mpi.launcher))
    if mpi.flavour is not None and mpi.launcher not in ("mpiexec", "torchrun"):
        errors.append((("mpi", "flavour"), f"only applies to mpi.launcher mpiexec (or torchrun, which starts "
                       f"one per node with mpiexec outside Slurm), not {mpi.launcher}", mpi.flavour))
    if mpi.extra_args and mpi.launcher == "none":
        errors.append((("mpi", "extra_args"), "mpi.launcher none has no launcher to pass them to", mpi.extra_args))
    for key, takers in BINDING_LAUNCHERS.items():
        value = getattr(mpi, key)
        if value is None:
            continue
        if mpi.starter not in takers:
            names = one_of(tuple("mpiexec with flavour pals" if name == "pals" else name for name in takers))
            why = (" (torchrun's one agent per node starts the ranks itself)" if mpi.launcher == "torchrun"
                   else f" (flavour {mpi.starter}: pass its own options through mpi.extra_args)"
                   if mpi.launcher == "mpiexec" else "")
            errors.append((("mpi", key), f"only {names} take it, not mpi.launcher {mpi.launcher}{why}; "
                           "remove it", value))
        elif (key, mpi.starter) in _BINDING_FORMS:
            form, expected = _BINDING_FORMS[key, mpi.starter]
            if not form.fullmatch(value):
                errors.append((("mpi", key), f"is not a binding {mpi.starter} takes; use {expected}", value))
    if mpi.gpu_bind is not None and device == "cpu":
        errors.append((("mpi", "gpu_bind"), "binds GPUs but device is cpu; set device, or remove gpu_bind",
                       mpi.gpu_bind))
    elif mpi.gpu_bind is not None and mpi.launcher == "srun" and not gpus_per_rank:
        errors.append((("mpi", "gpu_bind"), "srun binds only the GPUs its step holds, and this job asks for none; "
                       "set the launcher's gpus_per_rank", mpi.gpu_bind))
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
