"""Atomic writing of an exchange directory (a global model or an update).

Shards go into a hidden temporary sibling directory, each fsynced; the manifest
is written last; then one `rename` publishes the whole directory. A reader
therefore sees either nothing or a complete directory, even if the writer is
killed mid-way.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from fedhpc.errors import ExchangeError
from fedhpc.exchange.manifest import MANIFEST_NAME, ExchangeMeta, FileEntry, Manifest, TensorEntry
from fedhpc.exchange.safetensors_stream import StreamingShardWriter, TensorLayout

DEFAULT_SHARD_BYTES = 2 * 1024**3


def plan_shards(layout: list[TensorLayout], shard_bytes: int) -> list[list[TensorLayout]]:
    """Group tensors, in order, into shards of at most `shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[TensorLayout]] = [[]]
    size = 0
    for item in layout:
        if shards[-1] and size + item.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def shard_file_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_exchange(
    dest: Path,
    layout: list[TensorLayout],
    tensors: Iterable[tuple[str, torch.Tensor]],
    meta: ExchangeMeta,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    finish: Callable[[Manifest], Manifest] | None = None,
) -> Manifest:
    """Write `tensors` (yielded in `layout` order) to `dest` atomically; return the manifest.

    `tensors` may be a generator: each tensor is written as it arrives and then
    dropped, so the caller never needs the whole model in memory. `finish` may
    rewrite the manifest's tensor table before it is written (a compressed update
    lists each tensor over its codec's stored parts: `fedhpc.exchange.codecs.write`).
    """
    dest = Path(dest)
    if dest.exists():
        raise ExchangeError(f"{dest} already exists; exchange directories are written once")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        manifest = _write_shards(staging, layout, iter(tensors), meta, shard_bytes)
        if finish is not None:
            manifest = finish(manifest)
        _write_durably(staging / MANIFEST_NAME, manifest.to_json().encode())
        fsync_path(staging)
        os.rename(staging, dest)
        fsync_path(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def write_state_dict(
    dest: Path, state: dict[str, torch.Tensor], meta: ExchangeMeta, shard_bytes: int = DEFAULT_SHARD_BYTES
) -> Manifest:
    """Convenience for a caller that already holds every tensor (a worker's trainable state)."""
    layout = [TensorLayout(name, t.dtype, tuple(t.shape)) for name, t in state.items()]
    return write_exchange(dest, layout, state.items(), meta, shard_bytes)


def _write_shards(
    directory: Path,
    layout: list[TensorLayout],
    tensors: Iterator[tuple[str, torch.Tensor]],
    meta: ExchangeMeta,
    shard_bytes: int,
) -> Manifest:
    shards = plan_shards(layout, shard_bytes)
    tensor_entries: dict[str, TensorEntry] = {}
    file_entries: dict[str, FileEntry] = {}
    for index, shard in enumerate(shards):
        file_name = shard_file_name(index, len(shards))
        with StreamingShardWriter(directory / file_name, shard) as writer:
            for item in shard:
                try:
                    name, tensor = next(tensors)
                except StopIteration:
                    raise ExchangeError(f"tensor source ended before {item.name!r} was written") from None
                writer.write(name, tensor)
                del tensor  # before asking for the next one: a producer's peak is one tensor, not two
                tensor_entries[item.name] = TensorEntry(
                    shape=list(item.shape), dtype=str(item.dtype).removeprefix("torch."), file=file_name
                )
        file_entries[file_name] = FileEntry(blake3=writer.digest, bytes=writer.nbytes)
    leftover = next(tensors, None)
    if leftover is not None:
        raise ExchangeError(f"tensor {leftover[0]!r} was produced but not declared in the layout")
    return Manifest(**meta.model_dump(), tensors=tensor_entries, files=file_entries)


def publish_directory(dest: Path, fill: Callable[[Path], int], already_there: Callable[[], int]) -> int:
    """Build a directory beside `dest` with `fill(temp)` and rename it into place; return `fill`'s bytes.

    Readers see all of `dest` or nothing, and a publisher killed half-way leaves
    only a hidden ``.<name>.partial-*`` sibling, which nothing reads. `fill`
    creates `temp` itself. When the rename fails because another publisher of the
    same directory won it, `already_there()` decides (typically: the same
    manifest.json, 0 bytes); any other OSError propagates for the caller to word.
    """
    temp = dest.parent / f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbytes = fill(temp)
        fsync_path(temp)
        os.rename(temp, dest)
        fsync_path(dest.parent)
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        if dest.exists():
            return already_there()
        raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return nbytes


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry to disk: a rename is durable only once its directory is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
