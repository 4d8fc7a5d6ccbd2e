"""What a Globus Compute task runs at the facility: the SDK function object around fedhpc's worker command.

The server sends one `ShellFunction` (``function: shell``) or `MPIFunction` (``function: mpi``)
per job; both run a bash script in a subprocess on the endpoint's worker, and ``return_dict``
makes their result a plain JSON dict (return code, stdout and stderr tails). The script,
``worker_init`` first because module loads and venv activation must precede everything:

    function: shell                                  function: mpi (the endpoint's GlobusMPIEngine)
                                                     true      (MPIFunction puts $PARSL_MPI_PREFIX before
                                                                the first line; this no-op takes it)
    <worker_init>                                    <worker_init>
    export PATH=<python's bin>:"$PATH"  (only without worker_init: the venv's mpiexec)
                                                     <stop unless PARSL_MPI_PREFIX is set>
    export FEDHPC_DEVICE=... <env> <the job's env>   export FEDHPC_DEVICE=... <env> <the job's env>
    export MASTER_ADDR="$(hostname)"                 export MASTER_ADDR=<first node of $PARSL_MPI_NODELIST>
    export MASTER_PORT=<a free port on this node>    export MASTER_PORT=<a free port on this node>
    timeout -k 30 T <ranks.rank_command> </dev/null  timeout -k 30 T $PARSL_MPI_PREFIX <argv> </dev/null

With ``function: mpi`` the endpoint composes the rank launcher (mpiexec, srun or aprun with
``-n``/``-ppn``/``-hosts`` from the task's resource specification) and exports it as
``PARSL_MPI_PREFIX``; rank 0 runs on the first node of ``PARSL_MPI_NODELIST``, which need not be
the node the script runs on, so MASTER_ADDR names that node. With ``function: shell`` the
facility's own ``mpi`` launcher starts the ranks (`ranks.rank_command`), inside whatever
allocation the endpoint's worker holds. The worker's argv comes from the server, which names its
own interpreter first; that is replaced by ``launcher.python``, the facility's.

``timeout`` stops the ranks at the job's walltime (exit status 124). The SDK's own ``walltime``
only stops *waiting*: its subprocess keeps running. So the function's walltime is set a grace
later, to free the endpoint's worker should ``timeout`` itself fail to end the job.

`ShellFunction` formats its command with Python's `str.format` at the endpoint, so braces are
doubled here to reach bash unchanged.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from fedhpc.config import GlobusComputeLauncherConfig
from fedhpc.facility.base import JobSpec
from fedhpc.facility.launchers.ranks import Layout, rank_command

KILL_GRACE_S = 30
"""Seconds between ``timeout``'s SIGTERM at the walltime and its SIGKILL."""
FUNCTION_GRACE_S = 60.0
"""The SDK function's own walltime runs this much past the job's, so ``timeout`` ends the job first."""
SNIPPET_LINES = 200
"""Lines of stdout and stderr the task returns: small against the service's result size limit (10 MiB)."""
FUNCTION_NAME = "fedhpc_worker"
WALLTIME_EXIT = 124
"""Exit status of a job stopped at its walltime (``timeout``'s, and the SDK's)."""
NO_MPI_PREFIX_EXIT = 3
_FREE_PORT = 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
_NO_MPI_PREFIX = (
    "fedhpc: PARSL_MPI_PREFIX is not set: launcher.function mpi needs an endpoint whose engine is "
    "GlobusMPIEngine; use function: shell for a GlobusComputeEngine endpoint"
)


def worker_environment(config: GlobusComputeLauncherConfig, job_env: Mapping[str, str]) -> dict[str, str]:
    """What the script exports; later sources win: fedhpc defaults, ``config.env``, the job's env."""
    return {"FEDHPC_DEVICE": config.device, **config.env, **job_env}


def worker_command(
    config: GlobusComputeLauncherConfig, argv: Sequence[str], job_env: Mapping[str, str], walltime_s: float | None
) -> str:
    """The bash script of the module docstring; `argv[0]` is replaced by the facility's ``python``."""
    q = shlex.quote
    argv = [config.python, *argv[1:]]
    env = worker_environment(config, job_env)
    mpi = config.function == "mpi"
    lines = ["true  # takes $PARSL_MPI_PREFIX, which MPIFunction puts before the first line"] if mpi else []
    if config.worker_init:
        lines.append(config.worker_init)
    elif os.path.dirname(config.python):  # else worker_init owns PATH (module loads); ours would shadow a site's
        lines.append(f'export PATH={q(os.path.dirname(config.python))}:"$PATH"')
    if mpi:
        stop = f"{{ echo {q(_NO_MPI_PREFIX)} >&2; exit {NO_MPI_PREFIX_EXIT}; }}"
        lines.append(f'[ -n "${{PARSL_MPI_PREFIX:-}}" ] || {stop}')
    lines += [f"export {name}={q(value)}" for name, value in env.items()]
    if mpi:
        lines += ['fedhpc_nodes="${PARSL_MPI_NODELIST:-$(hostname)}"', 'export MASTER_ADDR="${fedhpc_nodes%%,*}"']
    else:
        lines.append('export MASTER_ADDR="$(hostname)"')
    lines.append(f'export MASTER_PORT="$({q(argv[0])} -c {q(_FREE_PORT)})"')
    if mpi:
        ranks = "$PARSL_MPI_PREFIX " + shlex.join(argv)
    else:
        layout = Layout(config.nodes, config.ranks_per_node, config.gpus_per_rank)
        ranks = rank_command(layout, config.mpi, argv, exported=list(env))
    if walltime_s is not None:
        ranks = f"timeout -k {KILL_GRACE_S} {math.ceil(walltime_s)} {ranks}"
    lines.append(ranks + " </dev/null")
    return "\n".join(lines) + "\n"


def resource_specification(config: GlobusComputeLauncherConfig) -> dict[str, Any] | None:
    """The MPI engine's partition of its batch job for one task; none for a shell function."""
    if config.function != "mpi":
        return None
    spec: dict[str, Any] = {
        "num_nodes": config.nodes, "ranks_per_node": config.ranks_per_node, "num_ranks": config.nprocs,
    }  # fmt: skip
    if config.mpi.extra_args:
        spec["launcher_options"] = shlex.join(config.mpi.extra_args)
    return spec


def output_paths(job: JobSpec) -> tuple[str | None, str | None]:
    """Where the task's whole stdout and stderr go at the facility, beside its task.json; None: the endpoint's sandbox.

    The task returns only their tails; the files keep everything for whoever debugs at the facility.
    """
    if job.task is None:
        return None, None
    directory = PurePosixPath(job.task).parent
    return str(directory / f"{job.name}.out"), str(directory / f"{job.name}.err")


def worker_function(config: GlobusComputeLauncherConfig, job: JobSpec, walltime_s: float | None) -> Any:
    """The SDK function object for `job` (imported here: the server needs the SDK only for this launcher).

    `walltime_s`: the time left to the job (less than ``job.walltime_s`` when a lost task is sent again).
    """
    from globus_compute_sdk import MPIFunction, ShellFunction

    command = worker_command(config, job.argv, job.env, walltime_s)
    stdout, stderr = output_paths(job)
    kind = MPIFunction if config.function == "mpi" else ShellFunction
    return kind(
        command.replace("{", "{{").replace("}", "}}"),
        stdout=stdout,
        stderr=stderr,
        walltime=None if walltime_s is None else walltime_s + FUNCTION_GRACE_S,
        snippet_lines=SNIPPET_LINES,
        name=FUNCTION_NAME,
        return_dict=True,
    )
