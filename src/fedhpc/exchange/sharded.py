"""An exchange directory written by every rank of a job at once, nothing gathered on rank 0.

Under FSDP each rank holds rows [start, stop) of every parameter (dim-0 shards).
Gathering them on one rank to write a single file would need the whole model in
that rank's memory and serialise the write; instead each rank writes its own rows
into its own safetensors file, and the manifest lists each tensor as parts
(format version 2 and later). Readers join parts (`ExchangeDir.get`) or read only the rows
they need (`ExchangeDir.get_rows`), so the server's streaming aggregator and the
next round's FSDP ranks read a sharded directory like any other.

The protocol, with a barrier between the steps (the caller owns the process group):

1. rank 0: `prepare_sharded(dest)` creates the hidden staging directory;
2. every rank: `write_rank_part(dest, rank, world_size, layout, tensors)` writes
   ``rank-<r>-of-<n>.safetensors`` and a small ``rank-<r>-of-<n>.json`` index;
3. rank 0: `publish_sharded(dest, world_size, meta)` checks that every rank's part is
   there, writes the manifest last and publishes the directory with one rename.

The staging directory needs a filesystem all ranks see (the update directory is
on the facility's shared filesystem in every launcher's setup).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedhpc.errors import ExchangeError
from fedhpc.exchange.manifest import (
    MANIFEST_NAME,
    FORMAT_VERSION,
    ExchangeMeta,
    FileEntry,
    Manifest,
    PartEntry,
    TensorEntry,
)
from fedhpc.exchange.safetensors_stream import StreamingShardWriter, TensorLayout
from fedhpc.exchange.writer import fsync_path


@dataclass(frozen=True)
class RowPart:
    """Rows [start, start + tensor.shape[0]) of `name`, whose whole shape is `shape`.

    `start` None: the tensor is whole (a parameter FSDP left unsharded); one rank writes it.
    """

    name: str
    shape: tuple[int, ...]
    start: int | None
    tensor: torch.Tensor


@dataclass(frozen=True)
class RankWriteStats:
    """What one rank's write cost; `publish_sharded` records every rank's in the manifest's metrics["save"]."""

    bytes: int  # bytes of this rank's safetensors file
    peak_tensor_bytes: int  # the largest tensor this rank held for writing at once
    seconds: float


def staging_dir(dest: Path) -> Path:
    """Where the ranks write before the rename; the same path on every rank (no pid or host in it)."""
    return dest.parent / f".{dest.name}.partial-sharded"


def rank_file_stem(rank: int, world_size: int) -> str:
    return f"rank-{rank:05d}-of-{world_size:05d}"


def prepare_sharded(dest: Path) -> Path:
    """Rank 0, before any rank writes: an empty staging directory (debris of a killed attempt removed)."""
    if dest.exists():
        raise ExchangeError(f"{dest} already exists; exchange directories are written once")
    staging = staging_dir(dest)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def write_rank_part(
    dest: Path,
    rank: int,
    world_size: int,
    parts: Iterable[RowPart],
    dtype: torch.dtype,
    value: Callable[[RowPart], torch.Tensor] | None = None,
) -> RankWriteStats:
    """Write this rank's rows, cast to `dtype`, and its index.

    The file's header is written first from the declared shapes, so `parts` are
    the local shards that exist anyway; what is written for each, `value(part)`
    (default: its rows; e.g. rows minus the global's for a delta), is computed
    and cast one part at a time, so the extra memory is one part.
    """
    started = time.perf_counter()
    staging = staging_dir(dest)
    items = [part for part in parts if part.tensor.shape[0:1] != (0,) or part.start is None]
    stem = rank_file_stem(rank, world_size)
    file_name = f"{stem}.safetensors"
    layout = [TensorLayout(part.name, dtype, tuple(part.tensor.shape)) for part in items]
    peak = 0
    with StreamingShardWriter(staging / file_name, layout) as writer:
        for part in items:
            cast = (part.tensor if value is None else value(part)).detach().to("cpu", dtype)
            peak = max(peak, cast.numel() * cast.element_size())
            writer.write(part.name, cast)
            del cast
    stats = RankWriteStats(bytes=writer.nbytes, peak_tensor_bytes=peak, seconds=time.perf_counter() - started)
    index = {
        "stats": dataclasses.asdict(stats),
        "file": file_name,
        "blake3": writer.digest,
        "bytes": writer.nbytes,
        "tensors": {
            part.name: {
                "shape": list(part.shape),
                "rows": None if part.start is None else [part.start, part.start + part.tensor.shape[0]],
            }
            for part in items
        },
    }
    index_path = staging / f"{stem}.json"
    index_path.write_text(json.dumps(index))
    return stats


def publish_sharded(dest: Path, world_size: int, meta: ExchangeMeta, dtype: torch.dtype) -> Manifest:
    """Rank 0, after every rank wrote: join the indexes into the manifest, write it last, rename."""
    staging = staging_dir(dest)
    dtype_name = str(dtype).removeprefix("torch.")
    files: dict[str, FileEntry] = {}
    whole: dict[str, tuple[list[int], str]] = {}
    pieces: dict[str, tuple[list[int], list[PartEntry]]] = {}
    order: list[str] = []
    rank_stats: list[dict[str, float]] = []
    for rank in range(world_size):
        index_path = staging / f"{rank_file_stem(rank, world_size)}.json"
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as e:
            raise ExchangeError(f"rank {rank} of {world_size} left no readable index {index_path}: {e}") from e
        rank_stats.append(index["stats"])
        files[index["file"]] = FileEntry(blake3=index["blake3"], bytes=index["bytes"])
        for name, item in index["tensors"].items():
            if name not in whole and name not in pieces:
                order.append(name)
            if item["rows"] is None:
                whole[name] = (item["shape"], index["file"])
            else:
                pieces.setdefault(name, (item["shape"], []))[1].append(
                    PartEntry(file=index["file"], rows=tuple(item["rows"]))
                )
        index_path.unlink()
    tensors: dict[str, TensorEntry] = {}
    for name in order:
        if name in whole:
            shape, file_name = whole[name]
            tensors[name] = TensorEntry(shape=shape, dtype=dtype_name, file=file_name)
        else:
            shape, parts = pieces[name]
            parts.sort(key=lambda part: part.rows[0])
            try:
                tensors[name] = TensorEntry(shape=shape, dtype=dtype_name, parts=parts)
            except ValueError as e:
                raise ExchangeError(f"the ranks' parts of {name!r} do not make up the tensor: {e}") from e
    fields = meta.model_dump()
    fields["metrics"] = {**fields["metrics"], "save": {key: [stats[key] for stats in rank_stats] for key in rank_stats[0]}}
    manifest = Manifest(**fields, format_version=FORMAT_VERSION, tensors=tensors, files=files)
    with open(staging / MANIFEST_NAME, "wb") as handle:
        handle.write(manifest.to_json().encode())
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(staging)
    os.rename(staging, dest)
    fsync_path(dest.parent)
    return manifest
