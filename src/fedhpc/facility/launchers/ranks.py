"""The line of a job script that starts a job's ranks: a pure function of strings (Parsl's launcher shape).

`rank_command(layout, mpi, argv)` wraps one rank's program `argv` for the
chosen rank launcher; the result is bash text, for a script that has already
exported ``MASTER_ADDR`` and ``MASTER_PORT`` (they are referenced, not
expanded here). T = nodes × ranks_per_node ranks, R per node, N nodes:

    mpiexec, mpich    mpiexec -n T -ppn R ARGV                       (Hydra; finds the nodes of a Slurm/PBS job)
    mpiexec, pals     mpiexec -n T --ppn R ARGV                      (Cray PALS: Polaris, Aurora; add --depth,
                                                                      --cpu-bind through extra_args)
    mpiexec, openmpi  mpiexec -n T --map-by ppr:R:node -x MASTER_ADDR -x MASTER_PORT -x VAR... ARGV
                                                                     (Open MPI forwards only what -x names;
                                                                      --allow-run-as-root only via extra_args)
    srun              srun --nodes N --ntasks T --ntasks-per-node R [--gpus-per-task G] --kill-on-bad-exit=1 ARGV
    aprun             aprun -n T -N R bash -c '<RANK etc. from ALPS_APP_PE>; exec "$@"' fedhpc-rank ARGV
    torchrun, 1 node  PY -m torch.distributed.run --nproc-per-node R --master-addr "$MASTER_ADDR"
                          --master-port "$MASTER_PORT" --no-python ARGV
    torchrun, N nodes one per node (srun under Slurm, else mpiexec of the flavour, 1 per node):
                      ... PY -m torch.distributed.run --nnodes N --nproc-per-node R --rdzv-backend c10d
                          --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --no-python ARGV
    none              ARGV                                           (one process)

``mpi.extra_args`` go right after the launcher's own options. srun needs no
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
        return " ".join([*_starter(layout, mpi.launcher, mpi.flavour, exported), *extra, program])
    if mpi.launcher == "aprun":
        alps = f'export RANK="$ALPS_APP_PE" WORLD_SIZE={layout.ranks} LOCAL_RANK="$((ALPS_APP_PE % {per}))"; exec "$@"'
        aprun = ["aprun", "-n", str(layout.ranks), "-N", str(per)]
        return " ".join([*aprun, *extra, "bash", "-c", shlex.quote(alps), "fedhpc-rank", program])
    # torchrun: one agent per node, each starting ranks_per_node ranks
    torchrun = [shlex.quote(argv[0]), "-m", "torch.distributed.run", "--nproc-per-node", str(per)]
    if layout.nodes == 1:
        torchrun += ["--master-addr", '"$MASTER_ADDR"', "--master-port", '"$MASTER_PORT"']
        return " ".join([*torchrun, *extra, "--no-python", program])
    torchrun += [
        "--nnodes", str(layout.nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", '"$MASTER_ADDR:$MASTER_PORT"'
    ]  # fmt: skip
    agents = _starter(Layout(layout.nodes, 1, layout.gpus_per_rank * per), per_node, mpi.flavour, exported)
    return " ".join([*agents, *torchrun, *extra, "--no-python", program])


def _starter(
    layout: Layout, launcher: Literal["srun", "mpiexec"], flavour: str | None, exported: Sequence[str]
) -> list[str]:
    """mpiexec's or srun's own words (shell-quoted) for `layout`, up to the program."""
    total, per = str(layout.ranks), str(layout.ranks_per_node)
    if launcher == "srun":
        words = ["srun", "--nodes", str(layout.nodes), "--ntasks", total, "--ntasks-per-node", per]
        if layout.gpus_per_rank:
            words += ["--gpus-per-task", str(layout.gpus_per_rank)]
        return [*words, "--kill-on-bad-exit=1"]
    if flavour in (None, "mpich"):
        return ["mpiexec", "-n", total, "-ppn", per]
    if flavour == "pals":
        return ["mpiexec", "-n", total, "--ppn", per]
    forwarded = dict.fromkeys([*MPI_ADDRESS, *exported])  # Open MPI: ordered, without repeats
    return ["mpiexec", "-n", total, "--map-by", f"ppr:{per}:node"] + [
        word for name in forwarded for word in ("-x", shlex.quote(name))
    ]
