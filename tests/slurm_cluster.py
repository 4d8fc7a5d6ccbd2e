"""A one-node Slurm cluster on 127.0.0.1 for the whole test session (scripts/slurm-cluster.sh).

Use it from a test module with

    from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

    @pytest.mark.slurm
    def test_x(slurm_cluster):
        subprocess.run(["sbatch", ...], env=slurm_cluster.env, check=True)

The cluster is skipped only where the Debian packages cannot be installed (or we are not root)
and the environment variable CI is unset; in CI that is a failure. Any other start failure fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-cluster.sh"
UNAVAILABLE = 3  # the script's exit status when this machine cannot host the cluster


@dataclass(frozen=True)
class SlurmCluster:
    dir: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF: pass as env= to sbatch, squeue, scancel, ...

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def run(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm command against this cluster, capturing text output."""
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, check=check)


def _script(command: str, directory: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command, str(directory)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    # mkdtemp under /tmp rather than tmp_path_factory: munged (running as the munge user) must be
    # able to reach its socket, and pytest's base temp directory is 0700.
    directory = Path(tempfile.mkdtemp(prefix="fedhpc-slurm-"))
    try:
        # Generous: the first start may apt-get install the packages.
        started = _script("start", directory, timeout=600)
        if started.returncode == UNAVAILABLE:
            reason = f"no Slurm test cluster: {started.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(f"{reason} (CI is set, so this is an error)", pytrace=False)
            pytest.skip(reason)
        if started.returncode != 0:
            pytest.fail(
                f"scripts/slurm-cluster.sh start {directory} exited {started.returncode}\n"
                f"{started.stdout}{started.stderr}",
                pytrace=False,
            )
        yield SlurmCluster(dir=directory, env={**os.environ, "SLURM_CONF": str(directory / "slurm.conf")})
    finally:
        stopped = _script("stop", directory, timeout=120)
        if stopped.returncode != 0:
            warnings.warn(f"slurm-cluster.sh stop {directory} exited {stopped.returncode}: {stopped.stderr}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
