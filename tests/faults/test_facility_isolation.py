"""A facility cannot reach outside its staging area through the filesystem mover.

The facility owns `staging/<facility>/`: anything there may have been put by
it. These tests play a facility that rewrites files in place (hard-link
aliasing), replaces directories with symbolic links, and leaves a FIFO where
the server reads its progress; the server's own files must not change, and
the server must neither follow a link nor block.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
import torch

from fedhpc.config import FilesystemMoverConfig
from fedhpc.errors import TransferError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.facility.movers.filesystem import FilesystemMover

FINGERPRINT = "sha256:" + "ab" * 32


def write(path: Path, kind: str = "global", round: int = 1) -> Path:
    extra = {"facility": "alpha", "based_on_round": round - 1, "num_samples": 4} if kind == "update" else {}
    state = {"a.weight": torch.full((8, 8), 0.125), "b.bias": torch.zeros(8)}
    write_state_dict(path, state, ExchangeMeta(kind=kind, round=round, base_fingerprint=FINGERPRINT, **extra))
    return path


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def scribble(path: Path) -> None:
    """What a facility can do to a file it holds: rewrite 16 bytes in place (same inode)."""
    with open(path, "r+b") as handle:
        handle.seek(-16, os.SEEK_END)
        handle.write(b"\xff" * 16)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def mover(run: Path) -> FilesystemMover:
    """The default configuration, as a user gets it."""
    return FilesystemMover(FilesystemMoverConfig(), default_staging=run / "staging" / "alpha")


def shard(directory: Path) -> Path:
    (only,) = sorted(directory.glob("*.safetensors"))
    return only


def test_a_facility_rewriting_its_staged_global_does_not_change_the_committed_one(run, mover):
    committed = write(run / "global" / "r0001")
    before = digest(committed)
    mover.push(committed, "global/r0001")

    scribble(shard(Path(mover.facility_path("global/r0001"))))

    assert digest(committed) == before
    ExchangeDir(committed).verify()


def test_a_facility_rewriting_its_accepted_update_does_not_change_the_server_copy(run, mover):
    staged = write(mover.staging_dir / "updates" / "r0001-a0", kind="update")
    pulled = run / "updates" / "r0001" / "alpha"
    mover.pull("updates/r0001-a0", pulled)
    ExchangeDir(pulled).verify()
    accepted = digest(pulled)

    scribble(shard(staged))

    assert digest(pulled) == accepted
    ExchangeDir(pulled).verify()
    assert all(p.stat().st_nlink == 1 for p in pulled.iterdir())


def test_hardlink_true_is_the_explicit_choice_to_share_files(run):
    trusting = FilesystemMover(FilesystemMoverConfig(hardlink=True), default_staging=run / "staging" / "alpha")
    committed = write(run / "global" / "r0001")
    trusting.push(committed, "global/r0001")
    assert shard(Path(trusting.facility_path("global/r0001"))).stat().st_ino == shard(committed).stat().st_ino


def test_a_symlinked_tasks_dir_is_not_written_through(tmp_path, run, mover):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mover.staging_dir.mkdir(parents=True)
    (mover.staging_dir / "tasks").symlink_to(elsewhere)
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.json").write_text("{}")

    with pytest.raises(TransferError, match="symbolic link"):
        mover.exists("tasks/r0001-a0/task.json")
    with pytest.raises(TransferError, match=r"staging/alpha/tasks is a symbolic link"):
        mover.push(task, "tasks/r0001-a0")
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_update_dir_is_not_pulled(tmp_path, run, mover):
    target = write(tmp_path / "someone-elses" / "update", kind="update")
    (mover.staging_dir / "updates").mkdir(parents=True)
    (mover.staging_dir / "updates" / "r0001-a0").symlink_to(target)
    pulled = run / "updates" / "r0001" / "alpha"

    with pytest.raises(TransferError, match="symbolic link"):
        mover.pull("updates/r0001-a0", pulled)
    assert not pulled.exists()
    assert all(p.stat().st_nlink == 1 for p in target.iterdir())


def test_a_symlinked_staged_global_dir_is_not_pushed_into(tmp_path, run, mover):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mover.staging_dir.mkdir(parents=True)
    (mover.staging_dir / "global").symlink_to(elsewhere)
    with pytest.raises(TransferError, match="symbolic link"):
        mover.push(write(run / "global" / "r0001"), "global/r0001")
    assert list(elsewhere.iterdir()) == []


def test_a_fifo_progress_file_does_not_block_the_server(mover):
    progress = mover.staging_dir / "progress"
    progress.mkdir(parents=True)
    os.mkfifo(progress / "r0001-a0.json")
    blocked = threading.Event()

    def release() -> None:  # a blocked open of the FIFO returns once a writer opens it
        blocked.set()
        os.close(os.open(progress / "r0001-a0.json", os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(10.0, release)
    timer.start()
    try:
        assert mover.peek("progress/r0001-a0.json") is None
    finally:
        timer.cancel()
    assert not blocked.is_set(), "peek blocked on a FIFO"


def test_a_symlinked_progress_file_is_not_followed(tmp_path, mover):
    secret = tmp_path / "server-secret.txt"
    secret.write_text('{"step": 1}')
    (mover.staging_dir / "progress").mkdir(parents=True)
    (mover.staging_dir / "progress" / "r0001-a0.json").symlink_to(secret)
    assert mover.peek("progress/r0001-a0.json") is None
    (mover.staging_dir / "progress" / "r0001-a0.json").unlink()
    (mover.staging_dir / "progress" / "r0001-a0.json").write_text('{"step": 2}')
    assert mover.peek("progress/r0001-a0.json") == b'{"step": 2}'
