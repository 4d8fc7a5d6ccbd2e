"""The line of a job script that starts a job's ranks: a pure function of strings (Parsl's launcher shape).

`rank_command(layout, mpi, argv)` wraps one rank's program `argv` for the
chosen rank launcher; the result is bash text, for a script that has already
exported ``MASTER_ADDR`` and ``MASTER_PORT`` (they are referenced, not
expanded here). T = nodes × ranks_per_node ranks, R per node, N nodes:

    mpiexec, mpich    mpiexec -n T -ppn R ARGV                       (Hydra; finds the nodes of a Slurm/PBS job)
    mpiexec, pals     mpiexec -n T --ppn R [--depth C] [--cpu-bind B] [--gpu-bind G] ARGV
                                                                     (Cray PALS: Polaris, Aurora)
    mpiexec, openmpi  mpiexec -n T --map-by ppr:R:node -x MASTER_ADDR -x MASTER_PORT -x VAR... ARGV
                                                                     (Open MPI forwards only what -x names;
                                                                      --allow-run-as-root only via extra_args)
    srun              srun --nodes N --ntasks T --ntasks-per-node R [--cpus-per-task C] [--gpus-per-task G]
                          [--cpu-bind=B] [--gpu-bind=G] --kill-on-bad-exit=1 ARGV
    aprun             aprun -n T -N R [-d C] [-cc B] bash -c '<RANK etc. from ALPS_APP_PE>; exec "$@"' fedhpc-rank ARGV
    torchrun, 1 node  PY -m torch.distributed.run --nproc-per-node R --master-addr "$MASTER_ADDR"
                          --master-port "$MASTER_PORT" --no-python ARGV
    torchrun, N nodes one per node (srun under Slurm, else mpiexec of the flavour, 1 per node):
                      ... PY -m torch.distributed.run --nnodes N --nproc-per-node R --rdzv-backend c10d
                          --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --no-python ARGV
    none              ARGV                                           (one process)

C, B and G are ``mpi.cpus_per_rank``, ``cpu_bind`` and ``gpu_bind`` (each line only where set; the config
refuses them for a launcher that has no such option). ``mpi.extra_args`` go right after the launcher's
own options. srun needs no
``--overlap``: with Parsl's SimpleLauncher the batch script itself is not a
step, so this srun is the job's first step. ``--kill-on-bad-exit`` ends the
other ranks when one dies instead of leaving them blocked in a collective.
ALPS exports only the rank (ALPS_APP_PE), so the aprun line derives WORLD_SIZE
and LOCAL_RANK (aprun fills nodes in order: rank mod R) for the worker's
`rank_env`. PY is ``argv[0]``, the worker's own python.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fedhpc.config import MpiConfig

MPI_ADDRESS = ("MASTER_ADDR", "MASTER_PORT")
"""Exported by the job script before the rank line runs; Open MPI must be told to forward them."""


@dataclass(frozen=True)
class Layout:
    """Where a job's ranks go: `nodes` × `ranks_per_node`, each with `gpus_per_rank` GPUs (0 on CPU)."""

    nodes: int = 1
    ranks_per_node: int = 1
    gpus_per_rank: int = 0

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node


def rank_command(
    layout: Layout,
    mpi: MpiConfig,
    argv: Sequence[str],
    *,
    exported: Sequence[str] = (),
    per_node: Literal["srun", "mpiexec"] = "mpiexec",
) -> str:
    """The bash line that starts `argv` on every rank of `layout`.

    `exported`: the job's own variables, which Open MPI forwards only when named (``-x``).
    `per_node`: what starts one torchrun per node when a torchrun job spans nodes.
    """
    program = shlex.join(argv)
    extra = [shlex.quote(arg) for arg in mpi.extra_args]
    per = layout.ranks_per_node
    if mpi.launcher == "none":
        return program
    if mpi.launcher in ("mpiexec", "srun"):
        return " ".join([*_starter(layout, mpi.launcher, mpi, exported), *extra, program])
    if mpi.launcher == "aprun":
        alps = f'export RANK="$ALPS_APP_PE" WORLD_SIZE={layout.ranks} LOCAL_RANK="$((ALPS_APP_PE % {per}))"; exec "$@"'
        cpus, binds = _binding(mpi)
        aprun = ["aprun", "-n", str(layout.ranks), "-N", str(per), *cpus, *binds]
        return " ".join([*aprun, *extra, "bash", "-c", shlex.quote(alps), "fedhpc-rank", program])
    # torchrun: one agent per node, each starting ranks_per_node ranks
    torchrun = [shlex.quote(argv[0]), "-m", "torch.distributed.run", "--nproc-per-node", str(per)]
    if layout.nodes == 1:
        torchrun += ["--master-addr", '"$MASTER_ADDR"', "--master-port", '"$MASTER_PORT"']
        return " ".join([*torchrun, *extra, "--no-python", program])
    torchrun += [
        "--nnodes", str(layout.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", '"$MASTER_ADDR:$MASTER_PORT"'
    ]  # fmt: skip
    agents = _starter(Layout(layout.nodes, 1, layout.gpus_per_rank * per), per_node, mpi, exported)
    return " ".join([*agents, *torchrun, *extra, "--no-python", program])


_BINDING_OPTIONS: dict[str, tuple[str, str, str | None]] = {
    "pals": ("--depth", "--cpu-bind", "--gpu-bind"),
    "srun": ("--cpus-per-task", "--cpu-bind=", "--gpu-bind="),
    "aprun": ("-d", "-cc", None),
}
"""Each launcher's option for mpi.cpus_per_rank, cpu_bind and gpu_bind (``=``: the value is joined to it)."""


def _binding(mpi: MpiConfig) -> tuple[list[str], list[str]]:
    """The launcher's words (shell-quoted) for each rank's CPU count, and for its CPU and GPU binding.

    Two lists because srun's GPU request goes between them, beside the other counts.
    """
    options = _BINDING_OPTIONS.get(mpi.starter)
    if options is None:
        return [], []
    words: list[list[str]] = []
    for option, value in zip(options, (mpi.cpus_per_rank, mpi.cpu_bind, mpi.gpu_bind), strict=True):
        quoted = shlex.quote(str(value))
        words.append([] if option is None or value is None else
                     [option + quoted] if option.endswith("=") else [option, quoted])  # fmt: skip
    return words[0], words[1] + words[2]


def _starter(
    layout: Layout, launcher: Literal["srun", "mpiexec"], mpi: MpiConfig, exported: Sequence[str]
) -> list[str]:
    """mpiexec's or srun's own words (shell-quoted) for `layout`, up to the program.

    The binding keys bind ranks, so a torchrun job's agents (one per node) start without them.
    """
    total, per = str(layout.ranks), str(layout.ranks_per_node)
    cpus, binds = _binding(mpi)
    if launcher == "srun":
        words = ["srun", "--nodes", str(layout.nodes), "--ntasks", total, "--ntasks-per-node", per, *cpus]
        if layout.gpus_per_rank:
            words += ["--gpus-per-task", str(layout.gpus_per_rank)]
        return [*words, *binds, "--kill-on-bad-exit=1"]
    flavour = mpi.flavour
    if flavour in (None, "mpich"):
        return ["mpiexec", "-n", total, "-ppn", per]
    if flavour == "pals":
        return ["mpiexec", "-n", total, "--ppn", per, *cpus, *binds]
    forwarded = dict.fromkeys([*MPI_ADDRESS, *exported])  # Open MPI: ordered, without repeats
    return ["mpiexec", "-n", total, "--map-by", f"ppr:{per}:node"] + [
        word for name in forwarded for word in ("-x", shlex.quote(name))
    ]
