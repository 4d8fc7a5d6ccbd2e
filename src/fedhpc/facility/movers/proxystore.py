"""Move exchange directories through a ProxyStore connector: a Redis server, a shared directory, or Globus.

The server and the facility need no filesystem in common, only the store.
The server publishes a directory as objects (`fedhpc.exchange.directory_objects`: chunks,
then an index written last, so the other side sees all of it or nothing), and
the facility's job, told about the store on its command line
(``fedhpc worker --store JSON``, see `worker_args`), fetches the task and the
global into ``facility_dir`` before it starts and publishes its update and
progress back (`fedhpc.worker.object_staging`).

Object names start with a namespace of the run's own, kept in the run
directory (``staging/<facility>/proxystore-namespace``): a resumed server
finds what its jobs published, and two runs sharing a Redis server never
read each other's objects. Nothing is deleted from the store; a run's objects
all start with its namespace.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path, PurePosixPath

from fedhpc.atomic_files import atomic_write_text
from fedhpc.config import ProxyStoreMoverConfig
from fedhpc.errors import TransferError
from fedhpc.exchange.proxystore_connectors import StoreSpec, open_objects
from fedhpc.facility.base import Mover

logger = logging.getLogger(__name__)

PEEK_MAX_BYTES = 1024 * 1024
NAMESPACE_FILE = "proxystore-namespace"


class ProxyStoreMover(Mover):
    """`Mover` through a ProxyStore connector; `default_staging` keeps only the run's namespace."""

    def __init__(self, config: ProxyStoreMoverConfig, default_staging: Path):
        self.config = config
        self.spec = StoreSpec(namespace=run_namespace(Path(default_staging)), mover=config)
        self.objects = open_objects(self.spec)

    def facility_path(self, relative: str) -> str:
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise TransferError(f"{relative!r} must be a relative path inside the staging area, without '..'")
        return str(self.config.facility_dir.joinpath(*parts))

    def push(self, local_dir: Path, relative: str) -> int:
        return self.objects.publish(Path(local_dir), relative)

    def pull(self, relative: str, local_dir: Path) -> int:
        return self.objects.fetch(relative, Path(local_dir))

    def exists(self, relative: str) -> bool:
        return self.objects.exists(relative)

    def peek(self, relative: str) -> bytes | None:
        """The progress file a job published (`None` before its first, or over `PEEK_MAX_BYTES`)."""
        data = self.objects.get_file(relative)
        return data if data is not None and len(data) <= PEEK_MAX_BYTES else None

    def worker_args(self) -> list[str]:
        """Added to the worker's command line: where its job fetches and publishes (JSON, no secrets)."""
        return ["--store", self.spec.model_dump_json()]


def run_namespace(staging: Path) -> str:
    """This run's and facility's prefix in the store: made once, then read back on every resume."""
    path = staging / NAMESPACE_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    namespace = f"fedhpc/{staging.name}/{uuid.uuid4().hex}"
    atomic_write_text(path, namespace + "\n", make_parents=True)
    logger.info("objects of facility %s go under %s in the store", staging.name, namespace)
    return namespace
