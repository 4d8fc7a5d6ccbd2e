"""Writing a compressed update: each tensor encoded as it is written, its stored parts listed under it.

The stored parts go through the ordinary streaming writer (`write_exchange`) as
tensors named ``<name>::<part>``; the manifest then lists each original tensor
with its decoded shape, ``float32``, and a `CodecEntry` (format version 4). The
sizes of the parts follow from shapes and params alone (`Codec.expected_parts`),
so the layout is known before anything is encoded and only one tensor is
encoded at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from fedhpc.exchange.codecs.base import Codec, Encoded
from fedhpc.exchange.codecs.stored import stored_name
from fedhpc.exchange.manifest import COMPRESSED_FORMAT_VERSION, STORED_SEPARATOR, CodecEntry, ExchangeMeta, Manifest
from fedhpc.exchange.manifest import StoredPart, TensorEntry
from fedhpc.exchange.safetensors_stream import TensorLayout, dtype_from_name
from fedhpc.exchange.writer import DEFAULT_SHARD_BYTES, write_exchange


def write_compressed(
    dest: Path,
    shapes: dict[str, tuple[int, ...]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    meta: ExchangeMeta,
    codec: Codec,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    observe: Callable[[str, torch.Tensor, Encoded], None] | None = None,
) -> Manifest:
    """Encode `tensors` (yielded in `shapes` order) with `codec` into `dest`, atomically; return the manifest.

    `observe(name, tensor, encoded)` sees each tensor with its encoding as it is
    written (error feedback keeps what the encoding dropped), so nothing is encoded twice.
    """
    params = {name: codec.params_for(shape) for name, shape in shapes.items()}
    layout = [
        TensorLayout(stored_name(name, part), dtype_from_name(spec.dtype), spec.shape)
        for name, shape in shapes.items()
        for part, spec in codec.expected_parts(shape, params[name]).items()
    ]

    def stored() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in tensors:
            encoded = codec.encode(tensor)
            if observe is not None:
                observe(name, tensor, encoded)
            del tensor
            for part, value in encoded.parts.items():
                yield stored_name(name, part), value

    def regroup(written: Manifest) -> Manifest:
        parts: dict[str, dict[str, StoredPart]] = {name: {} for name in shapes}
        for key, entry in written.tensors.items():
            name, part = key.rsplit(STORED_SEPARATOR, 1)
            parts[name][part] = StoredPart(file=entry.file or "", shape=entry.shape, dtype=entry.dtype)
        entries = {
            name: TensorEntry(
                shape=list(shape), dtype="float32", codec=CodecEntry(name=codec.name, params=params[name], stored=parts[name])
            )
            for name, shape in shapes.items()
        }
        fields = written.model_dump(exclude={"tensors", "files", "format_version", "format"})
        return Manifest(**fields, format_version=COMPRESSED_FORMAT_VERSION, tensors=entries, files=written.files)

    return write_exchange(dest, layout, stored(), meta, shard_bytes, finish=regroup)
