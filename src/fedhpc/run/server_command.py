"""Commands the server runs on its own machine (the round-0 init worker, evaluation), tied to its life.

A command runs ``python -m fedhpc ARGV`` under the `fedhpc.lifeline` wrapper
with SIGKILL as its parent-death signal: a server killed while one runs takes
it along, so an orphaned init worker can never publish ``global/r0000`` after
a resumed server has cleaned up and started its own. SIGKILL rather than
SIGTERM: these commands hold nothing that needs a clean stop (what they write
is published by rename), and a signal they could catch would let them publish
late. `subprocess.run` waits in the calling thread, so the thread that forks
the command outlives it, as the signal requires.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from fedhpc.lifeline import with_lifeline


def run_server_command(name: str, argv: list[str], log_dir: Path) -> str:
    """Run `python -m fedhpc ARGV` on the server, logs under `log_dir`; return "" or why it failed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    command = with_lifeline([sys.executable, "-m", "fedhpc", *argv], signal.SIGKILL)
    with open(log_dir / f"{name}.out", "wb") as out, open(log_dir / f"{name}.err", "wb") as err:
        result = subprocess.run(command, stdout=out, stderr=err)
    if result.returncode == 0:
        return ""
    tail = (log_dir / f"{name}.err").read_text(errors="replace").splitlines()[-15:]
    return f"exit {result.returncode}; see {log_dir / (name + '.err')}:\n" + "\n".join(tail)
