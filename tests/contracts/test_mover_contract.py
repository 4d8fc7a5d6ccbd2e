"""What every `Mover` promises (facility/base.py, docs/contracts.md), asked of each backend the same way.

The backends (mover_cases.py's `mover_case`): the filesystem mover copying and hard-linking, ProxyStore
through a real redis-server and through its File connector, and Globus Transfer at its HTTP edge.
Each test states one promise; what only one backend does stays in that backend's test file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhpc.errors import TransferError
from fedhpc.exchange import ExchangeDir
from mover_cases import (  # noqa: F401 - the fixtures: mover_case, and shared_redis that it asks for
    MoverCase, mover_case, shared_redis, tree_bytes, write_update,
)


@pytest.fixture
def update(tmp_path: Path) -> Path:
    return write_update(tmp_path / "server" / "global" / "r0001")


def test_push_publishes_the_whole_directory_and_returns_its_bytes(mover_case: MoverCase, update: Path):
    mover = mover_case.mover
    assert not mover.exists("global/r0001")
    assert mover.push(update, "global/r0001") == tree_bytes(update)
    assert mover.exists("global/r0001") and mover.exists("global/r0001/manifest.json")
    assert not mover.exists("global/r0001/model-09999-of-09999.safetensors") and not mover.exists("global/r0002")


def test_pull_copies_into_a_new_directory_and_returns_its_bytes(mover_case: MoverCase, tmp_path: Path, update: Path):
    mover = mover_case.mover
    mover.push(update, "global/r0001")
    pulled = tmp_path / "server" / "updates" / "r0001" / "alpha"
    assert mover.pull("global/r0001", pulled) == tree_bytes(update)
    ExchangeDir(pulled).verify()
    assert {p.name: p.read_bytes() for p in pulled.iterdir()} == {p.name: p.read_bytes() for p in update.iterdir()}
    assert sorted(p.name for p in pulled.parent.iterdir()) == ["alpha"]  # no temporary left behind


def test_pushing_the_same_directory_again_is_a_no_op_and_other_files_are_refused(
    mover_case: MoverCase, tmp_path: Path, update: Path
):
    mover = mover_case.mover
    mover.push(update, "global/r0001")
    assert mover.push(update, "global/r0001") == 0
    other = write_update(tmp_path / "other", scale=2.0)
    refused = mover_case.refusals.other_content.format(relative="global/r0001")
    with pytest.raises(TransferError, match=refused) as info:
        mover.push(other, "global/r0001")
    assert str(other) in str(info.value)
    mover.pull("global/r0001", tmp_path / "back")
    ExchangeDir(tmp_path / "back").verify()
    assert (tmp_path / "back" / "manifest.json").read_bytes() == (update / "manifest.json").read_bytes()


def test_pull_needs_a_published_source_and_a_free_destination(mover_case: MoverCase, tmp_path: Path, update: Path):
    mover, refusals = mover_case.mover, mover_case.refusals
    with pytest.raises(TransferError, match=refusals.unpublished.format(relative="updates/r0001-a0")):
        mover.pull("updates/r0001-a0", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()

    mover.push(update, "updates/r0001-a0")
    taken = write_update(tmp_path / "taken", scale=3.0)
    with pytest.raises(TransferError, match=refusals.taken_destination):
        mover.pull("updates/r0001-a0", taken)
    assert mover.pull("updates/r0001-a0", tmp_path / "dest") > 0
    assert mover.pull("updates/r0001-a0", tmp_path / "dest") == 0  # a retried pull


def test_a_publication_cut_short_is_not_seen_and_the_next_push_completes_it(
    mover_case: MoverCase, tmp_path: Path, update: Path
):
    mover = mover_case.mover
    mover_case.cut_short(update, "updates/r0001-a0")
    assert not mover.exists("updates/r0001-a0") and not mover.exists("updates/r0001-a0/manifest.json")
    with pytest.raises(TransferError):
        mover.pull("updates/r0001-a0", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()

    assert mover.push(update, "updates/r0001-a0") == tree_bytes(update)
    assert mover.pull("updates/r0001-a0", tmp_path / "dest") == tree_bytes(update)
    ExchangeDir(tmp_path / "dest").verify()


def test_peek_reads_a_small_file_and_nothing_else(mover_case: MoverCase, update: Path):
    mover = mover_case.mover
    assert mover.peek("progress/r0001-a0.json") is None
    mover_case.leave_small_file("progress/r0001-a0.json", b'{"step": 3}')
    assert mover.peek("progress/r0001-a0.json") == (b'{"step": 3}' if mover_case.peekable else None)
    assert mover.peek("progress") is None  # a directory
    mover.push(update, "global/r0001")
    assert mover.peek("global/r0001") is None


def test_facility_path_is_inside_the_staging_area_and_escapes_are_refused(mover_case: MoverCase):
    mover = mover_case.mover
    assert mover.facility_path("global/r0001") == str(mover_case.facility_root / "global" / "r0001")
    for bad in ("", "../elsewhere", "global/../../x", "/etc"):
        with pytest.raises(TransferError, match="relative path inside the staging area"):
            mover.exists(bad)
        with pytest.raises(TransferError, match="relative path inside the staging area"):
            mover.facility_path(bad)


def test_push_refuses_what_is_not_a_directory_of_plain_files(mover_case: MoverCase, tmp_path: Path, update: Path):
    mover = mover_case.mover
    with pytest.raises(TransferError, match="not a directory"):
        mover.push(tmp_path / "missing", "global/r0002")
    (update / "link").symlink_to("/etc/hostname")
    with pytest.raises(TransferError, match="not a plain file or directory"):
        mover.push(update, "global/r0001")
    assert not mover.exists("global/r0001")


def test_worker_args_are_what_the_jobs_command_must_add(mover_case: MoverCase):
    args = mover_case.mover.worker_args()
    assert all(isinstance(arg, str) for arg in args) and mover_case.worker_args_ok(args)
