"""The `mover` section of a facility: one config class per mover kind, and their union.

`MoverConfig` is the one place the kinds are listed; `MOVER_CONFIGS` (kind →
class, for `FacilityConfig` and the facility registry) is derived from it.
Every class states whether the facility's jobs are `remote` and where they
stage files apart from their data (`facility_staging()`).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, ClassVar, Literal
from uuid import UUID

from pydantic import AfterValidator, ByteSize, Field, field_validator, model_validator

from fedhpc.config.types import (
    BackendConfig,
    Duration,
    Frozen,
    KeyedErrors,
    PositiveInt,
    RelPath,
    kinds_of,
    raise_at,
    raise_keyed,
)


class FilesystemMoverConfig(BackendConfig):
    """Copies directories through a filesystem both sides can see."""

    remote: ClassVar[bool] = False

    kind: Literal["filesystem"] = "filesystem"
    staging_dir: RelPath | None = Field(None, description="default: <run_dir>/staging/<facility>")
    hardlink: bool = Field(
        False,
        description="hard-link instead of copying when on the same filesystem: only for a facility trusted with the "
        "server's files, since a linked file is one file in both areas and the facility could rewrite it",
    )

    def facility_staging(self) -> tuple[PurePosixPath, str] | None:
        """None: the staging directory is the server's, checked against the data by `Experiment`."""
        return None


_COLLECTION_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _collection_id(value: str) -> str:
    """A Globus collection UUID, lower-cased as the Transfer API writes it back."""
    normalised = value.strip().lower()
    if not _COLLECTION_ID.match(normalised):
        raise ValueError(
            "must be a Globus collection UUID (8-4-4-4-12 hex digits, as app.globus.org shows it among the "
            f"collection's details); got {value!r}"
        )
    return normalised


def _absolute_posix(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"must be an absolute path without '..', such as /scratch/project/fedhpc; got {value!r}")
    return str(path)


CollectionId = Annotated[str, AfterValidator(_collection_id)]
PosixAbsolute = Annotated[str, AfterValidator(_absolute_posix)]


class GlobusTransferMoverConfig(BackendConfig):
    """Moves directories with Globus Transfer between a collection on the server and the facility's collection.

    Each end's directory has two names: the collection's (what Globus transfers) and the filesystem's (what
    the server writes, what the facility's jobs read). They differ when a collection is rooted below its
    filesystem's root (a Globus Connect Server storage gateway on /lus/project) or a path starts at the
    collection's home (``/~/``). See facility/movers/globus_transfer.py.
    """

    remote: ClassVar[bool] = True

    kind: Literal["globus-transfer"] = "globus-transfer"
    facility_collection: CollectionId = Field(description="the facility's Globus collection (UUID)")
    facility_path: PosixAbsolute = Field(description="the facility's staging directory, as its collection names it")
    facility_dir: PosixAbsolute | None = Field(
        None, description="the same directory as the facility's jobs see it on their filesystem; default facility_path"
    )
    server_collection: CollectionId = Field(
        description="the server's collection (UUID): Globus Connect Server, or Globus Connect Personal on this machine"
    )
    server_dir: RelPath = Field(description="a directory on this machine that server_collection serves")
    server_path: PosixAbsolute | None = Field(
        None, description="server_dir as server_collection names it; default server_dir"
    )
    facility_data_access: bool = Field(
        False, description="facility_collection is a mapped Globus Connect Server v5 collection: needs data_access"
    )
    server_data_access: bool = Field(
        False, description="server_collection is a mapped Globus Connect Server v5 collection: needs data_access"
    )
    sync_level: Literal["exists", "size", "mtime", "checksum"] = Field(
        "checksum", description="what a retried transfer skips: files already at the destination equal by this measure"
    )
    verify_checksum: bool = Field(True, description="Globus checksums each file after copying and retries a mismatch")
    deadline: Duration = Field(3600.0, description="seconds one transfer may take before it is cancelled")
    poll_interval: Duration = Field(2.0, description="seconds before the first status query; doubles up to 60 s")

    @property
    def facility_root(self) -> str:
        """The staging directory as the facility's jobs see it."""
        return self.facility_dir or self.facility_path

    @property
    def server_root(self) -> str:
        """`server_dir` as `server_collection` names it."""
        return self.server_path or str(self.server_dir)

    def facility_staging(self) -> tuple[PurePosixPath, str]:
        """The staging directory as the facility's jobs see it, and the key that sets it (for `FacilityConfig`)."""
        return PurePosixPath(self.facility_root), "facility_dir" if self.facility_dir else "facility_path"

    @model_validator(mode="after")
    def _paths_derivable(self) -> GlobusTransferMoverConfig:
        """Defaults that would name a path no one can resolve are errors at the key to set instead."""
        if "~" in PurePosixPath(self.facility_root).parts:
            raise_at(type(self), ("facility_dir",), self.facility_dir, f"{self.facility_root} goes through the "
                      "collection's home (~), which the jobs' filesystem does not know; set facility_dir to the "
                      "staging directory's absolute path at the facility")
        if self.server_path is None and not self.server_dir.is_absolute():
            raise_at(type(self), ("server_dir",), str(self.server_dir), "must be absolute when server_path is "
                      "not set (it is also the collection's name for the directory)")
        if self.poll_interval >= self.deadline:
            raise_at(type(self), ("poll_interval",), self.poll_interval, f"is {self.poll_interval:g} s, not below "
                      f"deadline ({self.deadline:g} s): no transfer would be looked at before it is cancelled")
        return self


class RedisStoreConfig(Frozen):
    """A Redis server that the server and the facility's jobs both reach at this address."""

    host: str = Field(min_length=1)
    port: int = Field(6379, ge=1, le=65535)


class FileStoreConfig(Frozen):
    """A directory that the server and the facility's jobs both see at this path (ProxyStore's FileConnector)."""

    store_dir: RelPath


class GlobusStoreEndpoint(Frozen):
    """One collection of ProxyStore's GlobusConnector: its store directory as the collection and the hosts name it."""

    endpoint_path: str = Field(description="the store directory as the collection names it (absolute)")
    local_path: str = Field(description="the same directory as processes on the matching hosts open it (absolute)")
    host_regex: str = Field(description="hostnames (full match) on which this collection is the local one")

    @field_validator("endpoint_path", "local_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith(("/", "~")):
            raise ValueError(f"must be an absolute path, not {value!r}")
        return value

    @field_validator("host_regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"is not a regular expression: {e}") from None
        return value


class GlobusStoreConfig(Frozen):
    """ProxyStore's GlobusConnector: a directory per collection, kept in sync by Globus transfers."""

    endpoints: dict[UUID, GlobusStoreEndpoint] = Field(
        min_length=2, description="collection UUID → its store directory; the server's and the facility's"
    )
    timeout: PositiveInt = Field(600, description="seconds to wait for one Globus transfer")
    polling_interval: PositiveInt = Field(1, description="seconds between looks at a transfer in flight")


PROXYSTORE_MAX_CHUNK = 512 * 1024**2  # Redis refuses larger values (proto-max-bulk-len)


class ProxyStoreMoverConfig(BackendConfig):
    """Moves directories as objects through a ProxyStore connector: a Redis server, a shared directory, or Globus.

    The facility's jobs fetch what they read from the store and publish what they write to it
    (``fedhpc worker --store``), so the server and the facility need no filesystem in common.
    """

    remote: ClassVar[bool] = True

    kind: Literal["proxystore"] = "proxystore"
    connector: Literal["redis", "file", "globus"] = Field(description="redis, file or globus")
    redis: RedisStoreConfig | None = Field(None, description="connector redis: {host, port}")
    file: FileStoreConfig | None = Field(None, description="connector file: {store_dir}")
    globus: GlobusStoreConfig | None = Field(
        None, description="connector globus: {endpoints, timeout, polling_interval}"
    )
    facility_dir: Path = Field(description="absolute path at the facility where its jobs unpack what they fetch")
    chunk_size: ByteSize = Field(
        ByteSize(64 * 1024**2), description="files travel as objects of at most this size (at most 512MiB)"
    )

    def facility_staging(self) -> tuple[PurePosixPath, str]:
        """Where the facility's jobs unpack what they fetch, and its key (for `FacilityConfig`'s overlap check)."""
        return PurePosixPath(self.facility_dir), "facility_dir"

    @field_validator("facility_dir")
    @classmethod
    def _facility_path(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"is a path at the facility: give it as an absolute path there, not {str(value)!r}")
        return value

    @field_validator("chunk_size")
    @classmethod
    def _chunk_fits(cls, value: ByteSize) -> ByteSize:
        if not 0 < value <= PROXYSTORE_MAX_CHUNK:
            raise ValueError("must be a positive size of at most 512MiB (Redis's largest value), such as '64MiB'")
        return value

    @model_validator(mode="after")
    def _one_connector_section(self) -> ProxyStoreMoverConfig:
        """The chosen connector's section is required; another connector's would be silently ignored."""
        errors: KeyedErrors = []
        for name in ("redis", "file", "globus"):
            given = getattr(self, name) is not None
            if name == self.connector and not given:
                example = {"redis": "{host: ..., port: 6379}", "file": "{store_dir: ...}",
                           "globus": "{endpoints: {UUID: {endpoint_path, local_path, host_regex}, ...}}"}[name]
                errors.append(((name,), f"connector {name} needs its settings: {name}: {example}", None))
            elif name != self.connector and given:
                errors.append(((name,), f"only applies with connector {name}, not {self.connector}; remove it",
                               getattr(self, name)))
        raise_keyed(type(self), errors)
        return self


MoverConfig = Annotated[
    FilesystemMoverConfig | GlobusTransferMoverConfig | ProxyStoreMoverConfig, Field(discriminator="kind")
]
MOVER_CONFIGS = kinds_of(MoverConfig)
"""Each mover kind's config class, in the union's order (the order an unknown kind's error lists them)."""
