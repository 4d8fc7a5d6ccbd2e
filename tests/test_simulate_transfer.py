"""`transfer.bandwidth` of a simulated facility: a job's virtual duration pays its bytes over the link.

Real exchange directories (a staged global, a published update) and a real task
file; the job is re-attached, so the launcher reads the published update instead
of training. Duration = startup + (global bytes + update bytes) / bandwidth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from fedhpc.clock import VirtualClock
from fedhpc.config import ModelConfig, SimulatedLauncherConfig
from fedhpc.exchange import ExchangeMeta, WorkerTask, write_state_dict
from fedhpc.facility.base import JobSpec, JobState
from fedhpc.simulate.launcher import SimulatedLauncher, exchange_bytes

FINGERPRINT = "sha256:" + "1" * 64
STARTUP = 10.0


def exchange(path: Path, elements: int, kind: str = "update") -> Path:
    meta = ExchangeMeta(kind=kind, round=0 if kind == "global" else 1, facility=None if kind == "global" else "a",
                        based_on_round=None if kind == "global" else 0, base_fingerprint=FINGERPRINT)  # fmt: skip
    write_state_dict(path, {"w": torch.ones(elements)}, meta)
    return path


def job_seconds(tmp_path: Path, update_elements: int, transfer: dict | None, name: str = "r0001-a") -> float:
    """Virtual seconds from the job's start to its end, for a job whose update is already published."""
    global_dir = tmp_path / "global" if (tmp_path / "global").exists() else exchange(tmp_path / "global", 250_000,
                                                                                      "global")  # fmt: skip
    update_dir = exchange(tmp_path / f"update-{name}", update_elements)
    task = tmp_path / f"{name}.json"
    WorkerTask(round=1, facility="a", global_dir=global_dir, update_dir=update_dir, model=ModelConfig()).write(task)
    config = SimulatedLauncherConfig(startup=STARTUP, transfer=transfer)
    launcher = SimulatedLauncher(config, VirtualClock(0.0))
    spec = JobSpec(name=name, argv=[sys.executable, "-m", "fedhpc", "worker", "--task", str(task)],
                   log_dir=tmp_path / "logs")  # fmt: skip
    handle = launcher.reattach(spec, submitted_at=0.0)
    assert launcher.poll(handle).state == JobState.RUNNING  # at virtual time 0: no queue wait, not yet done
    return handle.native.ends_at - handle.native.starts_at


def test_a_job_pays_the_global_down_and_its_update_up_at_the_links_bandwidth(tmp_path: Path) -> None:
    seconds = job_seconds(tmp_path, 500_000, {"bandwidth": "1MB/s"})
    moved = exchange_bytes(tmp_path / "global") + exchange_bytes(tmp_path / "update-r0001-a")
    assert moved == sum(p.stat().st_size for d in ("global", "update-r0001-a") for p in (tmp_path / d).iterdir())
    assert moved > 3_000_000  # 1 MB of global + 2 MB of update, plus headers and manifests
    assert seconds == pytest.approx(STARTUP + moved / 1e6)
    assert job_seconds(tmp_path, 500_000, None, name="r0001-b") == STARTUP  # no link: transfers are free


def test_halving_the_bandwidth_doubles_the_transfer_time(tmp_path: Path) -> None:
    fast = job_seconds(tmp_path, 500_000, {"bandwidth": "2MB/s"}, name="r0001-a")
    slow = job_seconds(tmp_path, 500_000, {"bandwidth": "1MB/s"}, name="r0001-b")
    assert slow - STARTUP == pytest.approx(2 * (fast - STARTUP))


def test_a_bigger_update_takes_its_extra_bytes_over_the_link(tmp_path: Path) -> None:
    small = job_seconds(tmp_path, 500_000, {"bandwidth": "1MiB/s"}, name="r0001-a")
    large = job_seconds(tmp_path, 1_000_000, {"bandwidth": "1MiB/s"}, name="r0001-b")
    extra = exchange_bytes(tmp_path / "update-r0001-b") - exchange_bytes(tmp_path / "update-r0001-a")
    assert extra >= 2_000_000  # a million more fp32 values
    assert large - small == pytest.approx(extra / 2**20)


@pytest.mark.parametrize("bad", ["2GB", "fast/s", "0GB/s", -1])
def test_a_bandwidth_that_is_not_a_positive_rate_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ValidationError, match=r"transfer\.bandwidth"):
        SimulatedLauncherConfig(transfer={"bandwidth": bad})
