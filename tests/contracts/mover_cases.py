"""Each mover, ready to use, with what its contract test needs to know about it.

A case builds its mover over directories under the test's `tmp_path` (and, for
ProxyStore with Redis, a real redis-server; for Globus Transfer, the service at
its HTTP edge). The contract tests in test_mover_contract.py ask only the
`Mover` protocol; a case adds the few things the protocol leaves to the backend:
the words of its refusals, how its facility's jobs leave a small file, and what
a publication cut short leaves behind.

The `mover_case` fixture yields each case in turn. It lives here, not in a
conftest.py: a second ``conftest`` module would shadow tests/conftest.py for the
test modules that import from it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import globus_sdk
import pytest
import responses
import torch
from globus_sdk.testing import get_response_set
from globus_edge import TransferService
import redis_server

from fedhpc.config import FilesystemMoverConfig, GlobusTransferMoverConfig, ProxyStoreMoverConfig
from fedhpc.exchange import ExchangeMeta, write_state_dict
from fedhpc.facility.base import Mover
from fedhpc.facility.movers.filesystem import FilesystemMover
from fedhpc.facility.movers.globus_transfer import GlobusTransferMover
from fedhpc.facility.movers.proxystore import ProxyStoreMover
from fedhpc.worker.object_staging import FacilityStore

META = ExchangeMeta(
    kind="update", round=1, facility="alpha", based_on_round=0, num_samples=8, base_fingerprint="sha256:" + "0" * 64
)
CHUNK = 100  # proxystore bytes per object: every shard of the test update spans several
GLOBUS_FACILITY = get_response_set("transfer.operation_stat").metadata["endpoint_id"]
GLOBUS_SERVER = str(uuid.UUID(int=0x5E12E2))


def write_update(path: Path, scale: float = 1.0) -> Path:
    """An exchange directory of several shards (64-byte shards), as a round's update is."""
    state = {
        "layers.0.lora_A.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale,
        "layers.0.lora_B.weight": torch.ones(4, 3) * scale,
        "layers.1.lora_A.weight": torch.full((3, 4), 0.5 * scale),
    }
    write_state_dict(path, state, META, shard_bytes=64)
    return path


def tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@dataclass
class Refusals:
    """What each backend's `TransferError` says (regular expressions) when it refuses."""

    other_content: str  # pushing other files where a directory is published
    unpublished: str  # pulling what was never published
    taken_destination: str  # pulling into a directory that holds other files


class MoverCase:
    """One backend's mover and its particulars; subclasses fill them in."""

    mover: Mover
    facility_root: Path  # where `facility_path("")` would be: the jobs' view of the staging area
    refusals: Refusals
    peekable: bool = True  # whether `peek` reads a small file cheaply (Globus cannot)

    def leave_small_file(self, relative: str, data: bytes) -> None:
        """Write `data` at `relative` as the facility's job does (a progress.json)."""
        path = self.facility_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def cut_short(self, local_dir: Path, relative: str) -> None:
        """Leave what a push of `local_dir` at `relative` that died half-way leaves."""
        raise NotImplementedError

    def worker_args_ok(self, args: list[str]) -> bool:
        """By default a mover adds nothing to the worker's command line."""
        return args == []


class FilesystemCase(MoverCase):
    def __init__(self, tmp_path: Path, hardlink: bool):
        self.mover = FilesystemMover(FilesystemMoverConfig(hardlink=hardlink), default_staging=tmp_path / "staging")
        self.facility_root = tmp_path / "staging"
        self.refusals = Refusals(
            other_content=r"cannot copy .* to .*/staging/{relative}: the destination exists and does not hold the same "
                          r"manifest.json",
            unpublished=r"cannot pull .*/{relative}: no such directory",
            taken_destination=r"destination exists",
        )

    def cut_short(self, local_dir: Path, relative: str) -> None:
        """A copy into the hidden ``.<name>.partial-*`` sibling that never reached its rename."""
        dest = self.facility_root / relative
        partial = dest.parent / f".{dest.name}.partial-4242"
        partial.mkdir(parents=True)
        shard = sorted(local_dir.glob("*.safetensors"))[0]
        shutil.copyfile(shard, partial / shard.name)


class ProxyStoreCase(MoverCase):
    def __init__(self, tmp_path: Path, connector: str, store: dict[str, Any]):
        self.facility_root = tmp_path / "facility"
        config = ProxyStoreMoverConfig(connector=connector, **store, facility_dir=self.facility_root, chunk_size=CHUNK)
        self.mover = ProxyStoreMover(config, tmp_path / "run" / "staging" / "alpha")
        self.refusals = Refusals(
            other_content=r"already holds a {relative} with other files",
            unpublished=r"cannot fetch {relative}: .* holds no .*/index/{relative}",
            taken_destination=r"exists and holds other files",
        )

    def leave_small_file(self, relative: str, data: bytes) -> None:
        """The job writes its progress file in its facility_dir and publishes it to the store."""
        super().leave_small_file(relative, data)
        facility = FacilityStore.from_json(self.mover.worker_args()[1])
        facility.publish_progress(self.facility_root / relative, "training")

    def cut_short(self, local_dir: Path, relative: str) -> None:
        """Every chunk written, then the store lost before the index (written last) could be."""
        store = self.mover.objects.store
        original = store.set

        def set_until_the_index(name: str, data: bytes) -> None:
            if "/index/" in name:
                raise ConnectionError("the store went away")
            original(name, data)

        store.set = set_until_the_index
        try:
            self.mover.push(local_dir, relative)
        except ConnectionError:
            pass
        finally:
            store.set = original

    def worker_args_ok(self, args: list[str]) -> bool:
        """The job is told which store and namespace hold its files."""
        return len(args) == 2 and args[0] == "--store" and FacilityStore.from_json(args[1]) is not None


class GlobusTransferCase(MoverCase):
    """The facility's collection and the server's are local directories behind `globus_edge.TransferService`."""

    peekable = False

    def __init__(self, tmp_path: Path):
        facility_fs, gcp = tmp_path / "facility-fs", tmp_path / "gcp"
        self.facility_root = facility_fs / "project" / "fedhpc"
        config = GlobusTransferMoverConfig(
            facility_collection=GLOBUS_FACILITY, facility_path="/project/fedhpc", facility_dir=str(self.facility_root),
            server_collection=GLOBUS_SERVER, server_dir=gcp / "fedhpc", server_path="/fedhpc",
            poll_interval=0.01, deadline=10,
        )  # fmt: skip
        client = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer("test-token"))
        self.mover = GlobusTransferMover(config, tmp_path / "quick.start" / "staging" / "alpha", client)
        self.collections = {GLOBUS_FACILITY: facility_fs, GLOBUS_SERVER: gcp}
        self.refusals = Refusals(
            other_content=r"exists and does not hold the same manifest.json",
            unpublished=r"cannot pull .*/{relative} .*has not published it",
            taken_destination=r"exists and does not hold the same manifest.json",
        )

    def cut_short(self, local_dir: Path, relative: str) -> None:
        """A transfer into the ``.<name>.partial-globus`` directory that died before the rename."""
        dest = self.facility_root / relative
        partial = dest.parent / f".{dest.name}.partial-globus"
        partial.mkdir(parents=True)
        shard = sorted(local_dir.glob("*.safetensors"))[0]
        shutil.copyfile(shard, partial / shard.name)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_server.RedisServer]:
    """One redis-server for the module, not one per test (a start and stop is ~0.3 s): every case's run
    keeps its objects under a namespace of its own, so no test sees another's."""
    redis_server._ensure_installed()
    process, server = redis_server._start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["filesystem-copy", "filesystem-hardlink", "proxystore-redis", "proxystore-file",
                        "globus-transfer"])  # fmt: skip
def mover_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MoverCase]:
    """Each mover in turn; Globus Transfer's HTTP edge is up while the test runs."""
    backend = request.param
    if backend.startswith("filesystem"):
        yield FilesystemCase(tmp_path, hardlink=backend.endswith("hardlink"))
    elif backend == "proxystore-redis":
        server: redis_server.RedisServer = request.getfixturevalue("shared_redis")
        yield ProxyStoreCase(tmp_path, "redis", {"redis": {"host": server.host, "port": server.port}})
    elif backend == "proxystore-file":
        yield ProxyStoreCase(tmp_path, "file", {"file": {"store_dir": tmp_path / "store"}})
    else:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            case = GlobusTransferCase(tmp_path)
            TransferService(mock, case.collections)
            yield case
