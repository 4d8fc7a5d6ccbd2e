"""The filesystem mover: hard links or copies, interrupted pushes, symlinks.

What every mover promises (round trips, no-op re-pushes, refusals, peek) is asked of this one in
tests/contracts/test_mover_contract.py.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from fedhpc.config import FilesystemMoverConfig
from fedhpc.errors import TransferError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.facility.movers import filesystem
from fedhpc.facility.movers.filesystem import FilesystemMover

META = ExchangeMeta(
    kind="update", round=1, facility="alpha", based_on_round=0, num_samples=8, base_fingerprint="sha256:" + "0" * 64
)


def write_update(path: Path, scale: float = 1.0) -> Path:
    state = {
        "layers.0.lora_A.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale,
        "layers.0.lora_B.weight": torch.ones(4, 3) * scale,
        "layers.1.lora_A.weight": torch.full((3, 4), 0.5 * scale),
    }
    write_state_dict(path, state, META, shard_bytes=64)  # several shards
    return path


def files_of(directory: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in sorted(directory.iterdir())}


def only_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def update(tmp_path) -> Path:
    return write_update(tmp_path / "server" / "global" / "r0001")


def test_round_trip_hard_links_on_one_filesystem_when_asked(tmp_path, update):
    mover = FilesystemMover(FilesystemMoverConfig(hardlink=True), default_staging=tmp_path / "staging")
    total = sum(s.st_size for s in files_of(update).values())
    assert len(files_of(update)) >= 3

    assert not mover.exists("global/r0001")
    assert mover.push(update, "global/r0001") == total
    staged = Path(mover.facility_path("global/r0001"))
    assert staged == tmp_path / "staging" / "global" / "r0001"
    assert mover.exists("global/r0001")
    ExchangeDir(staged).verify()
    assert {n: s.st_ino for n, s in files_of(staged).items()} == {n: s.st_ino for n, s in files_of(update).items()}

    pulled = tmp_path / "server" / "updates" / "r0001" / "alpha"
    assert mover.pull("global/r0001", pulled) == total
    ExchangeDir(pulled).verify()
    assert {n: s.st_ino for n, s in files_of(pulled).items()} == {n: s.st_ino for n, s in files_of(staged).items()}
    assert only_entries(pulled.parent) == ["alpha"]  # no temporary left behind


def test_round_trip_copies_by_default(tmp_path, update):
    mover = FilesystemMover(FilesystemMoverConfig(staging_dir=tmp_path / "shared"), default_staging=tmp_path / "unused")
    total = mover.push(update, "global/r0001")
    staged = tmp_path / "shared" / "global" / "r0001"
    assert not (tmp_path / "unused").exists()
    pulled = tmp_path / "back"
    assert mover.pull("global/r0001", pulled) == total == sum(s.st_size for s in files_of(update).values())
    for directory in (staged, pulled):
        ExchangeDir(directory).verify()
        assert all(files_of(directory)[n].st_ino != s.st_ino for n, s in files_of(update).items())
        assert all(s.st_nlink == 1 for s in files_of(directory).values())
    assert (pulled / "manifest.json").read_bytes() == (update / "manifest.json").read_bytes()


def test_copies_when_the_filesystem_refuses_links(tmp_path, update, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(filesystem.os, "link", no_link)
    mover = FilesystemMover(FilesystemMoverConfig(hardlink=True), default_staging=tmp_path / "staging")
    mover.push(update, "global/r0001")
    staged = tmp_path / "staging" / "global" / "r0001"
    ExchangeDir(staged).verify()
    assert all(s.st_nlink == 1 for s in files_of(staged).values())


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_push_leaves_no_partial_destination(tmp_path, update, monkeypatch, error):
    copied = []
    copy_file = filesystem.copy_file

    def copy_then_fail(source: Path, dest: Path) -> int:
        if copied:
            raise error
        copied.append(dest)
        return copy_file(source, dest)

    monkeypatch.setattr(filesystem, "copy_file", copy_then_fail)
    mover = FilesystemMover(FilesystemMoverConfig(hardlink=False), default_staging=tmp_path / "staging")
    expected = TransferError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        mover.push(update, "global/r0001")
    if expected is TransferError:
        assert "No space left on device" in str(info.value) and str(update) in str(info.value)
    assert copied  # it did get half-way
    assert not mover.exists("global/r0001")
    assert only_entries(tmp_path / "staging" / "global") == []

    monkeypatch.undo()
    assert mover.push(update, "global/r0001") > 0  # and a retry then succeeds
    ExchangeDir(tmp_path / "staging" / "global" / "r0001").verify()


def test_a_push_refused_for_a_symlink_leaves_no_partial_copy(tmp_path, update):
    mover = FilesystemMover(FilesystemMoverConfig(), default_staging=tmp_path / "staging")
    (update / "link").symlink_to("/etc/hostname")
    with pytest.raises(TransferError, match="not a plain file or directory"):
        mover.push(update, "global/r0001")
    assert only_entries(tmp_path / "staging" / "global") == []
