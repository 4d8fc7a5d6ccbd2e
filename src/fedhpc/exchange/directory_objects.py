"""Directories as objects in a key-value store: every chunk of every file first, an index last.

A store (Redis, a ProxyStore connector) has names and values but no
directories and no rename, so a directory is published as one object per
chunk of each file, then an index object naming the files, their sizes and
the sha256 of each chunk. The index goes in only once every chunk is readable
at the other end: a reader that finds it finds the whole directory, one that
does not finds nothing, and a publisher that dies half-way leaves only chunks
no index names. Fetching checks every chunk against the index and unpacks
into a hidden sibling that is renamed into place, like `writer.write_exchange`.

Object names, under a namespace of the run's own:
``<ns>/index/<relative>``, ``<ns>/chunk/<relative>/<file>/<i>`` and, for a
single small file rewritten in place (a worker's progress.json),
``<ns>/file/<relative>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from fedhpc.errors import TransferError
from fedhpc.exchange.writer import publish_directory

logger = logging.getLogger(__name__)

INDEX_FORMAT = "fedhpc-objects"


class ObjectStore(Protocol):
    """Bytes by name. `set` may only be seen at the other end after `flush`."""

    where: str  # for messages: "Redis at host:port", "the store directory /x"

    def get(self, name: str) -> bytes | None: ...

    def set(self, name: str, data: bytes) -> None: ...

    def exists(self, name: str) -> bool: ...

    def flush(self, wait: bool) -> None:
        """Send what was `set` to the other end; with `wait`, return only once it can be read there."""
        ...


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IndexEntry(_Strict):
    bytes: NonNegativeInt
    chunks: list[str] = Field(description="sha256 of each chunk, in order")


class DirectoryIndex(_Strict):
    format: Literal["fedhpc-objects"] = INDEX_FORMAT
    format_version: Literal[1] = 1
    chunk_bytes: PositiveInt
    files: dict[str, IndexEntry] = Field(description="path inside the directory (POSIX) → its size and chunks")


class DirectoryObjects:
    """Publish, fetch and look up directories in `store` under `namespace`, `chunk_bytes` per object.

    Like the filesystem mover, `publish` and `fetch` return the bytes they moved,
    or 0 when the destination already held the same directory, so a retried
    transfer that had completed is a no-op; a destination holding other files
    is an error, never overwritten.
    """

    def __init__(self, store: ObjectStore, namespace: str, chunk_bytes: int):
        self.store = store
        self.namespace = namespace.rstrip("/")
        self.chunk_bytes = chunk_bytes

    def publish(self, local_dir: Path, relative: str) -> int:
        """Publish `local_dir` as `relative`, complete or not at all; return the bytes sent."""
        local_dir = Path(local_dir)
        relative = _checked(relative)
        if not local_dir.is_dir():
            raise TransferError(f"cannot publish {local_dir}: not a directory")
        existing = self._index(relative)
        if existing is not None:
            return self._already_there(local_dir, relative, existing, publishing=True)
        files: dict[str, IndexEntry] = {}
        total = 0
        try:
            for name, path in _files_of(local_dir):
                hashes, size = [], 0
                with open(path, "rb") as handle:
                    while chunk := handle.read(self.chunk_bytes):
                        self.store.set(self._chunk_name(relative, name, len(hashes)), chunk)
                        hashes.append(hashlib.sha256(chunk).hexdigest())
                        size += len(chunk)
                files[name] = IndexEntry(bytes=size, chunks=hashes)
                total += size
        except OSError as e:
            raise TransferError(f"cannot publish {local_dir} to {self.store.where}: {e}") from e
        self.store.flush(wait=True)  # every chunk readable before the index that names them
        index = DirectoryIndex(chunk_bytes=self.chunk_bytes, files=files)
        self.store.set(self._index_name(relative), index.model_dump_json().encode())
        self.store.flush(wait=True)
        logger.debug("published %s as %s in %s (%d bytes)", local_dir, relative, self.store.where, total)
        return total

    def fetch(self, relative: str, local_dir: Path) -> int:
        """Unpack `relative` into `local_dir`, which must not exist (or hold this same directory)."""
        relative = _checked(relative)
        index = self._index(relative)
        if index is None:
            raise TransferError(
                f"cannot fetch {relative}: {self.store.where} holds no {self._index_name(relative)} "
                "(never published, or not completely: if a job should have, see its .err log)"
            )
        local_dir = Path(local_dir).absolute()
        if local_dir.exists():
            return self._already_there(local_dir, relative, index, publishing=False)

        def unpack(temp: Path) -> int:
            temp.mkdir()
            return sum(self._unpack(relative, name, entry, temp / name) for name, entry in index.files.items())

        try:  # on a lost race, another fetch of the same directory won the rename
            total = publish_directory(
                local_dir, unpack, lambda: self._already_there(local_dir, relative, index, publishing=False)
            )
        except OSError as e:
            raise TransferError(f"cannot fetch {relative} from {self.store.where} into {local_dir}: {e}") from e
        logger.debug("fetched %s from %s into %s (%d bytes)", relative, self.store.where, local_dir, total)
        return total

    def exists(self, relative: str) -> bool:
        """Whether `relative` is a published directory, or a file or folder inside one."""
        parts = PurePosixPath(_checked(relative)).parts
        for depth in range(len(parts), 0, -1):
            index = self._index("/".join(parts[:depth]))
            if index is not None:
                rest = "/".join(parts[depth:])
                return not rest or rest in index.files or any(name.startswith(rest + "/") for name in index.files)
        return False

    def put_file(self, relative: str, data: bytes) -> None:
        """Rewrite a small file in place (not all-or-nothing across files: a progress report)."""
        self.store.set(self._file_name(_checked(relative)), data)
        self.store.flush(wait=False)

    def get_file(self, relative: str) -> bytes | None:
        return self.store.get(self._file_name(_checked(relative)))

    def _unpack(self, relative: str, name: str, entry: IndexEntry, target: Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(target, "wb") as out:
            for i, digest in enumerate(entry.chunks):
                key = self._chunk_name(relative, name, i)
                data = self.store.get(key)
                if data is None:
                    raise TransferError(
                        f"{key} is missing from {self.store.where}, though {self._index_name(relative)} lists it; "
                        f"publish {relative} again"
                    )
                if hashlib.sha256(data).hexdigest() != digest:
                    raise TransferError(
                        f"{key} in {self.store.where} does not match its sha256 in {self._index_name(relative)} "
                        f"(corrupted in the store or in transit); publish {relative} again"
                    )
                out.write(data)
                written += len(data)
            out.flush()
            os.fsync(out.fileno())
        if written != entry.bytes:
            raise TransferError(
                f"{relative}/{name}: its chunks in {self.store.where} add up to {written} bytes, "
                f"{self._index_name(relative)} says {entry.bytes}; publish {relative} again"
            )
        return written

    def _index(self, relative: str) -> DirectoryIndex | None:
        name = self._index_name(relative)
        raw = self.store.get(name)
        if raw is None:
            return None
        try:
            index = DirectoryIndex.model_validate_json(raw)
        except ValidationError as e:
            raise TransferError(f"{name} in {self.store.where} is not a directory index (corrupted?): {e}") from e
        for file_name in index.files:
            _checked(file_name)  # a name from the other side must not lead out of the directory
        return index

    def _already_there(self, local_dir: Path, relative: str, index: DirectoryIndex, publishing: bool) -> int:
        """0 when `local_dir` holds exactly the files `index` describes; else an error naming both."""
        try:
            same = _describe(local_dir, index.chunk_bytes) == index.files
        except (OSError, TransferError):
            same = False
        if not same:
            problem = (
                f"cannot publish {local_dir} as {relative}: {self.store.where} already holds a {relative} "
                "with other files"
                if publishing
                else f"cannot fetch {relative} from {self.store.where}: {local_dir} exists and holds other files"
            )
            raise TransferError(f"{problem}; exchange directories are written once (remove it or use a new round)")
        logger.debug("%s already holds %s; nothing to do", local_dir, relative)
        return 0

    def _index_name(self, relative: str) -> str:
        return f"{self.namespace}/index/{relative}"

    def _chunk_name(self, relative: str, name: str, i: int) -> str:
        return f"{self.namespace}/chunk/{relative}/{name}/{i}"

    def _file_name(self, relative: str) -> str:
        return f"{self.namespace}/file/{relative}"


def _checked(relative: str) -> str:
    path = PurePosixPath(relative)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise TransferError(f"{relative!r} must be a relative path inside the staging area, without '..'")
    return str(path)


def _files_of(directory: Path) -> list[tuple[str, Path]]:
    """Every regular file under `directory`, by POSIX path inside it; a link or device is refused, not followed."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            raise TransferError(f"{path} is not a plain file or directory; exchange directories hold only those")
        if path.is_file():
            found.append((path.relative_to(directory).as_posix(), path))
    return found


def _describe(directory: Path, chunk_bytes: int) -> dict[str, IndexEntry]:
    """What an index of `directory` would say, chunked as `chunk_bytes`."""
    files = {}
    for name, path in _files_of(directory):
        hashes = []
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                hashes.append(hashlib.sha256(chunk).hexdigest())
        files[name] = IndexEntry(bytes=path.stat().st_size, chunks=hashes)
    return files
