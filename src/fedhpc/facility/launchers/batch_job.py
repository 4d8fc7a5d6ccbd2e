"""What a batch job runs and how its end is read: pure functions of strings, for the parsl launcher.

`job_script` composes the bash the job runs once on its first node (Parsl's provider puts the
scheduler directives and ``worker_init`` in front of it):

    date +%s.%N > <dir>/<job>.started
    export PATH=<the worker python's bin>:$PATH          (only without worker_init: the venv's mpiexec)
    export FEDHPC_DEVICE=cpu GLOO_SOCKET_IFNAME=lo ...    (device, launcher.env, the job's env)
    export MASTER_ADDR=$(hostname) MASTER_PORT=<a free port on this node>
    <the rank line: ranks.rank_command> </dev/null
    rc=$?; <rc into <dir>/<job>.rc, atomically>; exit $rc

`job_outcome` turns an ended job's ``.rc`` file, stderr and the scheduler's final word into a
`JobStatus`: a job without an exit status was stopped from outside, and the scheduler's stderr
banner (Slurm's ``*** JOB N ON host CANCELLED AT ... DUE TO TIME LIMIT ***``, PBS's and LSF's
equivalents) or final state says why.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedhpc.config import ParslLauncherConfig
from fedhpc.facility.base import REASON_LINES, JobState, JobStatus, failure_reason
from fedhpc.facility.launchers.ranks import Layout, rank_command

DEFAULT_WALLTIME_S = 3600.0
"""Walltime of a job whose spec names none and whose config sets none."""
_FREE_PORT = 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'

# Why a scheduler stopped a job, from the banner it writes to the job's stderr.
_BANNERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT \S+ DUE TO TIME LIMIT"), "walltime exceeded ({walltime})"),
    (re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT \S+ DUE TO PREEMPTION"), "preempted by the scheduler"),
    (re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT \S+ DUE TO NODE FAIL"), "node failure"),
    (re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT"), "cancelled by the scheduler (scancel)"),
    (re.compile(r"PBS: job killed: walltime"), "walltime exceeded ({walltime})"),
    (re.compile(r"TERM_RUNLIMIT"), "walltime exceeded ({walltime})"),
    (re.compile(r"TERM_OWNER|TERM_ADMIN"), "cancelled by the scheduler (bkill)"),
)
# Slurm's final job states (scontrol), or Parsl's, when stderr has no banner.
_STATE_REASONS: dict[str, str] = {
    "TIMEOUT": "walltime exceeded ({walltime})",
    "DEADLINE": "walltime exceeded ({walltime})",
    "CANCELLED": "cancelled by the scheduler",
    "PREEMPTED": "preempted by the scheduler",
    "NODE_FAIL": "node failure",
    "BOOT_FAIL": "node failure",
    "OUT_OF_MEMORY": "out of memory (the scheduler killed the job)",
    "KILLED": "killed by a signal from outside fedhpc",  # local provider: gone without an exit status
}
UNEXPLAINED = "the job ended without an exit status"
"""How `job_outcome` starts a reason it could not explain (no exit status, no banner, no known state)."""
_BANNER_LINE = re.compile(
    r"\*\*\* (JOB|STEP) \S+ ON \S+ CANCELLED AT|^srun: (error: )?(Job step aborted|forcing job termination)"
)


def walltime_for(seconds: float | None) -> str:
    """``HH:MM:SS`` for a job that may run `seconds`, rounded up to whole minutes (schedulers count minutes)."""
    minutes = max(1, math.ceil((DEFAULT_WALLTIME_S if seconds is None else seconds) / 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _loopback(address: str | None) -> bool:
    return address is not None and (address.startswith("127.") or address in ("localhost", "::1"))


def job_environment(config: ParslLauncherConfig, job_env: Mapping[str, str]) -> dict[str, str]:
    """What the job script exports; later sources win: fedhpc defaults, ``config.env``, the job's env.

    Gloo is pinned to loopback when rank 0's address is a loopback one (a one-machine job).
    """
    env = {"FEDHPC_DEVICE": config.device}
    if _loopback(config.master_addr):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    env.update(config.env)
    env.update(job_env)
    return env


def job_script(
    config: ParslLauncherConfig, argv: Sequence[str], job_env: Mapping[str, str], rc_file: Path, started_file: Path
) -> str:
    """The command the provider runs once on the job's first node; see the module docstring."""
    q = shlex.quote
    env = job_environment(config, job_env)
    lines = [
        "# fedhpc job script (fedhpc.facility.launchers.parsl), run once on the job's first node",
        f"date +%s.%N > {q(str(started_file))}",
    ]
    if not config.worker_init:  # else worker_init owns PATH (module loads); ours would shadow a site's mpiexec
        lines.append(f'export PATH={q(os.path.dirname(argv[0]))}:"$PATH"')
    lines += [f"export {name}={q(value)}" for name, value in env.items()]
    master = q(config.master_addr) if config.master_addr else '"$(hostname)"'
    lines += [f"export MASTER_ADDR={master}", f'export MASTER_PORT="$({q(argv[0])} -c {q(_FREE_PORT)})"']
    layout = Layout(config.nodes, config.ranks_per_node, config.gpus_per_rank)
    per_node = "srun" if config.provider == "slurm" else "mpiexec"
    lines.append(rank_command(layout, config.mpi, argv, exported=list(env), per_node=per_node) + " </dev/null")
    rc, tmp = q(str(rc_file)), q(f"{rc_file}.tmp")
    lines += ["rc=$?", f"printf '%s\\n' \"$rc\" > {tmp} && mv -f {tmp} {rc}", 'exit "$rc"']
    return "\n".join(lines) + "\n"


def _lines_tail(text: str, max_lines: int = REASON_LINES) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not _BANNER_LINE.search(line)]
    return "\n".join(lines[-max_lines:])


def job_outcome(
    rc_text: str | None, stderr: str, *, walltime: str, scheduler_state: str = "", message: str = ""
) -> JobStatus:
    """A finished job's status from its ``.rc`` file (None: never written), stderr and the scheduler's word.

    With an exit status the program's own stderr explains a failure; without one the job was stopped
    from outside, and the scheduler's stderr banner or final state says why.
    """
    if rc_text is not None:
        try:
            returncode = int(rc_text.strip())
        except ValueError:
            return JobStatus(JobState.FAILED, None, f"unreadable exit status {rc_text.strip()!r}")
        if returncode == 0:
            return JobStatus(JobState.DONE, 0)
        return JobStatus(JobState.FAILED, returncode, failure_reason(_lines_tail(stderr, 10**6), returncode))
    for pattern, reason in _BANNERS:
        if pattern.search(stderr):
            return JobStatus(JobState.FAILED, None, reason.format(walltime=walltime))
    if scheduler_state in _STATE_REASONS:
        return JobStatus(JobState.FAILED, None, _STATE_REASONS[scheduler_state].format(walltime=walltime))
    said = f"scheduler state {scheduler_state or 'unknown'}" + (f": {message}" if message else "")
    tail = _lines_tail(stderr)
    return JobStatus(
        JobState.FAILED, None,
        f"{UNEXPLAINED} ({said}); " + (f"stderr tail:\n{tail}" if tail else "nothing on stderr"),
    )  # fmt: skip
